"""Scale-out (ugcn.parallel): device mesh, sharded cohort fit / MC / lesion scoring, multi-host, resumable runs.

The multi-device checks need several devices, which a JAX process fixes at start-up: they run in ONE
subprocess (tests/sharding_checks.py) with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``, so the
rest of the suite keeps one device and the programs compile once. Sharded results are compared with the
single-device ones (which tests/test_refine.py, test_uncertainty.py and test_lesion_gcnn.py check against
independent references); cohorts of 5 items do not divide by 4 devices, so padding is always exercised.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ugcn.parallel import (
    describe, device_mesh, distributed_settings, initialize_distributed, pad_batch, padded_size, process_slice,
    unpad,
)
from ugcn.parallel.resume import SETTINGS_KEY, case_state

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", UGCN_COMPILATION_CACHE="off",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(var, None)
    return env


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    """Results of tests/sharding_checks.py at 4 forced host devices (one subprocess for the module)."""
    work = tmp_path_factory.mktemp("sharding")
    out = work / "checks.json"
    proc = subprocess.run([sys.executable, str(HERE / "sharding_checks.py"), str(out), str(work)], env=_env(4),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


# --- in this process (one device) ------------------------------------------------------------------------

def test_pad_and_unpad_leading_axis():
    tree = {"a": np.arange(10).reshape(5, 2), "b": np.ones(5, bool)}
    padded, n = pad_batch(tree, 4)
    assert n == 5 and padded["a"].shape == (8, 2) and padded["b"].shape == (8,)
    np.testing.assert_array_equal(padded["a"][5:], np.repeat(tree["a"][:1], 3, axis=0))  # copies of item 0
    np.testing.assert_array_equal(unpad(padded, n)["a"], tree["a"])
    assert pad_batch(tree, 5)[0]["a"].shape == (5, 2)  # a multiple already: unchanged
    assert [padded_size(n, 4) for n in (1, 4, 5, 8, 9)] == [4, 4, 8, 8, 12]
    with pytest.raises(ValueError, match="leading"):
        pad_batch({"a": np.zeros(3), "b": np.zeros(4)}, 2)


def test_mesh_on_one_device():
    mesh = device_mesh()
    assert mesh.axis_names == ("batch",) and mesh.shape["batch"] == 1
    assert describe(mesh, 7) == "1 device (cpu), 7 volumes per device"
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        device_mesh(2)
    with pytest.raises(ValueError, match="positive"):
        device_mesh(0)


def test_distributed_settings_from_environment():
    explicit = {"JAX_COORDINATOR_ADDRESS": "node0:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
    s = distributed_settings(explicit)
    assert (s.mode, s.coordinator_address, s.num_processes, s.process_id) == ("explicit", "node0:1234", 4, 2)
    assert distributed_settings({}).mode == "single"
    assert distributed_settings({**explicit, "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}).mode == "single"
    assert distributed_settings({"SLURM_NTASKS": "8", "SLURM_JOB_ID": "1"}).mode == "cluster"
    assert distributed_settings({"SLURM_NTASKS": "1"}).mode == "single"
    assert distributed_settings({"OMPI_COMM_WORLD_SIZE": "2"}).mode == "cluster"
    for bad, match in (({"JAX_COORDINATOR_ADDRESS": "node0:1234"}, "missing"),
                       ({**explicit, "JAX_PROCESS_ID": "4"}, "must lie"),
                       ({**explicit, "JAX_NUM_PROCESSES": "four"}, "integer"),
                       ({**explicit, "JAX_COORDINATOR_ADDRESS": "node0"}, "host:port")):
        with pytest.raises(ValueError, match=match):
            distributed_settings(bad)
    assert initialize_distributed({}).mode == "single"  # nothing to do, nothing done


def test_process_slice_partitions_the_sorted_inputs():
    items = [f"case{i:02d}" for i in range(11)][::-1]
    parts = [process_slice(items, index=i, count=3) for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(items)  # every item once
    assert parts[0] == ["case00", "case03", "case06", "case09"]  # independent of the listing order
    assert process_slice(items) == sorted(items)  # one process: everything
    with pytest.raises(ValueError):
        process_slice(items, index=3, count=3)


def test_case_state(tmp_path):
    settings = {"seed": 0, "dilation": (5, 7, 7)}
    assert case_state(tmp_path / "missing", settings) == "todo"
    done = tmp_path / "done"
    done.mkdir()
    (done / "report.json").write_text(json.dumps({SETTINGS_KEY: {"seed": 0, "dilation": [5, 7, 7]}}))
    assert case_state(done, settings) == "finished"
    assert case_state(done, settings, overwrite=True) == "todo"
    with pytest.raises(ValueError, match="seed differ"):
        case_state(done, {**settings, "seed": 1})
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="no report.json"):
        case_state(junk, settings)


# --- four forced host devices (one subprocess) -------------------------------------------------------------

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


# --- two processes (jax.distributed on localhost) ------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_share_a_folder(tmp_path):
    """JAX_COORDINATOR_ADDRESS/NUM_PROCESSES/PROCESS_ID: each process refines its slice; process 0 waits
    for the other and writes the complete summary."""
    from test_refine import sphere_case, write_case

    src = tmp_path / "in"
    for i in range(3):
        write_case(src, f"case{i}", sphere_case(shape=(16, 16, 12), radius=4.5, seed=i))
    out = tmp_path / "out"
    argv = ["refine-batch", "--images", str(src), "--samples-dir", str(src / "samples"), "--out", str(out),
            "--gcn-epochs", "5"]
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
