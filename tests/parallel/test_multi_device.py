"""Scale-out across modules: sharded cohort fit / MC / lesion scoring, multi-host, resumable runs.

The multi-device checks need several devices, which a JAX process fixes at start-up: they run in ONE
subprocess (tests/parallel/sharding_checks.py) with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``, so
the rest of the suite keeps one device and the programs compile once. Sharded results are compared with the
single-device ones (which tests/refine/test_fit.py, tests/uncertainty/test_sampling.py and
tests/lesion/test_gcnn.py check against independent references); cohorts of 5 items do not divide by 4
devices, so padding is always exercised.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", UGCN_COMPILATION_CACHE="off",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(var, None)
    return env


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    """Results of tests/parallel/sharding_checks.py at 4 forced host devices (one subprocess for the module)."""
    work = tmp_path_factory.mktemp("sharding")
    out = work / "checks.json"
    proc = subprocess.run([sys.executable, str(HERE / "sharding_checks.py"), str(out), str(work)], env=_env(4),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_shard_batch_splits_a_padded_cohort(four_devices):
    m = four_devices["mesh"]
    assert m["devices"] == 4 and m["mesh_size"] == 4
    assert m["padded"] == 8 and m["true_count"] == 5 and m["shard_rows"] == [2, 2, 2, 2] and m["shard_devices"] == 4
    assert m["padding_rows_copy_item0"] and m["unpad_equal"] and m["keys_equal"] and m["too_many_raises"]
    assert m["describe"] == "4 devices (cpu), 2 volumes per device"


def test_sharded_fit_equals_single_device_fit(four_devices):
    f = four_devices["fit"]["devices_4"]
    assert f["shape"][0] == 5  # the padding is dropped
    assert f["probs_diff"] < 1e-5 and f["losses_diff"] < 1e-5 and f["params_diff"] < 1e-5


def test_sharded_lesion_scores_equal_single_device(four_devices):
    assert four_devices["lesions"]["n"] == 64 and four_devices["lesions"]["diff"] < 1e-6


def test_interrupted_refine_batch_resumes_to_identical_outputs(four_devices):
    r = four_devices["refine_batch"]
    assert r["interrupted_code"] != 0 and r["finished_before_resume"] == ["case0", "case1"]
    assert r["resume_code"] == 0 and r["rewritten_on_resume"] == ["case2", "case3", "case4"]  # nothing redone
    assert r["finished_untouched"]
    # clean run at 1 device == a run interrupted at 4 devices (cases 0, 1) and resumed at 1 device
    assert r["same_masks"] and r["same_reports"]
    assert r["summary_volumes"] == [f"case{i}" for i in range(5)] and r["summary_pending"] == []
    assert r["other_settings_code"] == 2  # a re-run with other settings is refused, not mixed in


def test_mcdo_folder_mode_equals_single_image_runs(four_devices):
    """mc_sample_batch sharded over 4 devices (5 volumes) == mc_sample of one volume, samples included."""
    m = four_devices["mcdo_folder"]
    assert m["codes"] == [0, 0] and m["volumes"] == [f"c{i}" for i in range(5)]
    assert max(m["diffs"].values()) < 1e-5, m["diffs"]


def test_refine_batch_with_a_model_equals_refine(four_devices):
    r = four_devices["refine_model"]
    assert r["codes"] == [0, 0] and r["status"][0] == r["status"][1]
    assert r["same_graph"] and r["same_masks"]


def test_lesions_score_folder_mode_equals_single_image(four_devices):
    r = four_devices["lesions_folder"]
    assert r["codes"] == [0, 0] and r["volumes"] == [f"c{i}" for i in range(5)] and r["same_header"]
    assert r["lesions"] > 0 and r["column_diffs"] is not None
    for name in ("lesion", "size", "centroid_x", "centroid_z_mm", "gcnn_classif", "entropy_mean", "one_minus_pcs_mean"):
        assert r["column_diffs"][name] < 1e-5, (name, r["column_diffs"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_share_a_folder(tmp_path, sphere_case, write_case):
    """JAX_COORDINATOR_ADDRESS/NUM_PROCESSES/PROCESS_ID: each process refines its slice; process 0 waits
    for the other and writes the complete summary."""
    src = tmp_path / "in"
    for i in range(3):
        write_case(src, f"case{i}", sphere_case(shape=(16, 16, 12), radius=4.5, seed=i))
    out = tmp_path / "out"
    # Absolute tau: these small spheres have uncertain voxels at 0.8 (the adaptive default may find none).
    argv = ["refine-batch", "--images", str(src), "--samples-dir", str(src / "samples"), "--out", str(out),
            "--gcn-epochs", "5", "--tau-mode", "absolute"]
    code = "import sys; from ugcn.cli import main; sys.exit(main(sys.argv[1:]))"
    port = _free_port()
    procs = []
    for pid in range(2):
        env = _env(1)
        env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen([sys.executable, "-c", code, *argv], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stdout[-2000:] + stderr[-2000:]
    assert "process 0 of 2: 2 of 2 volumes to refine" in results[0][0]  # case0, case2
    assert "process 1 of 2: 1 of 1 volumes to refine" in results[1][0]  # case1
    mine = [json.loads((out / f"case{i}" / "report.json").read_text()) for i in range(3)]
    assert all(r["status"] == "refined" for r in mine)
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["volumes"]) == ["case0", "case1", "case2"] and summary["pending"] == []


def test_cli_rejects_more_devices_than_available(tmp_path, capsys):
    from ugcn.cli import main

    rc = main(["lesions", "score", "--image", "x.nii.gz", "--model", "m", "--lesion-model", str(tmp_path),
               "--out", str(tmp_path / "o"), "--devices", "3"])
    assert rc == 2 and "only 1 are available" in capsys.readouterr().err
