"""Faults a user or the system brings, through the ``ugcn`` command: each one line on stderr, exit code 2 (or
the signal's code), checked before the work, and nothing half-written left behind (issue 17)."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ugcn.io import (
    TEMP_PREFIX,
    atomic_directory,
    check_output_folder,
    clean_stale_temporaries,
    save_volume,
)

AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _hidden(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _refine_inputs(folder: Path, shape=(16, 16, 8), n_samples=3) -> dict:
    """A ball with an uncertain shell: image, 4D foreground sample maps (X, Y, Z, T) and a prediction."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    r = np.sqrt(((grid - np.array(shape)[:, None, None, None] / 2) ** 2).sum(0))
    rng = np.random.default_rng(0)
    image = ((r < 4.5) + rng.normal(0, 0.1, shape)).astype(np.float32)
    e = np.clip(1.0 - (r - 3.5) / 2.0, 0.02, 0.98).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    save_volume(folder / "a.nii.gz", image, AFFINE)
    save_volume(folder / "samples.nii.gz", np.repeat(e[..., None], n_samples, -1), AFFINE)
    save_volume(folder / "prediction.nii.gz", (e > 0.5).astype(np.uint8), AFFINE)
    return {"image": folder / "a.nii.gz", "samples": folder / "samples.nii.gz",
            "prediction": folder / "prediction.nii.gz"}


def _refine_argv(inputs: dict, out: Path, *extra) -> list:
    return ["refine", "--image", str(inputs["image"]), "--samples", str(inputs["samples"]), "--prediction",
            str(inputs["prediction"]), "--out", str(out), "--gcn-epochs", "3", "--quiet", *extra]


# ------------------------------------------------------------------ defect 1: unwritable output, full disk
WORK_STARTS = {
    "refine": ("ugcn.commands.refine", "run_refine"),
    "refine-batch": ("ugcn.commands.refine", "run_refine_batch"),
    "mcdo": ("ugcn.commands.mcdo", "run"),
    "phantoms": ("ugcn.commands.phantoms", "run"),
    "train": ("ugcn.commands.train", "run"),
}


def _argv_with_out(command: str, out: Path, tmp_path: Path) -> list:
    x = str(tmp_path / "x.nii.gz")
    return {
        "refine": ["refine", "--image", x, "--samples", x, "--out", str(out)],
        "refine-batch": ["refine-batch", "--images", str(tmp_path), "--samples-dir", str(tmp_path), "--out", str(out)],
        "mcdo": ["mcdo", "--model", str(tmp_path), "--image", x, "--out", str(out)],
        "phantoms": ["phantoms", "ct", str(out)],
        "train": ["train", "--data", str(tmp_path), "--out", str(out)],
    }[command]


@pytest.mark.parametrize("command", sorted(WORK_STARTS))
def test_an_unwritable_output_folder_fails_in_one_line_before_the_work(command, tmp_path, capsys, monkeypatch, run_cli):
    import importlib

    module, name = WORK_STARTS[command]

    def work(args):
        raise AssertionError("the work started before the output folder was checked")

    monkeypatch.setattr(importlib.import_module(module), name, work)
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder is expected")
    for out in (blocker, blocker / "case"):
        code, _, err = run_cli(capsys, _argv_with_out(command, out, tmp_path))
        line = _one_line_error(err)
        assert code == 2 and line.startswith(f"ugcn {command}: error: {out}")
        assert "not a folder" in line
    assert blocker.read_text() == "a file where a folder is expected"


def test_an_immutable_output_folder_is_reported_even_for_root(tmp_path, capsys, run_cli):
    folder = tmp_path / "locked"
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        with pytest.raises(ValueError, match="cannot write"):
            check_output_folder(folder / "new")
        code, _, err = run_cli(capsys, ["phantoms", "ct", str(folder / "new"), "--n", "1", "--shape", "16,16,16"])
        assert code == 2 and "cannot write" in _one_line_error(err)
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch, run_cli):
    def no_space(img, filename):
        Path(filename).write_bytes(b"\0" * 10)  # a partly written file, as a full disk leaves it
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(nib, "save", no_space)
    out = tmp_path / "ds"
    code, _, err = run_cli(capsys, ["phantoms", "ct", str(out), "--n", "2", "--shape", "16,16,16", "--quiet"])
    line = _one_line_error(err)
    assert code == 2 and "No space left on device" in line and line.startswith("ugcn phantoms: error: ")
    assert not out.exists() and os.listdir(tmp_path) == []


# ------------------------------------------------------------------ defect 3: SIGTERM, SIGKILL, whole folders
def test_sigterm_while_writing_leaves_no_temporary(tmp_path, capsys, monkeypatch, run_cli):
    real_save = nib.save
    calls = []

    def save_then_terminated(img, filename):
        real_save(img, filename)
        calls.append(filename)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(nib, "save", save_then_terminated)
    previous = signal.getsignal(signal.SIGTERM)
    argv = ["phantoms", "ct", str(tmp_path / "ds"), "--n", "3", "--shape", "16,16,16", "--quiet"]
    code, _, err = run_cli(capsys, argv)
    assert code == 128 + signal.SIGTERM and "terminated" in _one_line_error(err)
    assert os.listdir(tmp_path) == []  # neither the data set nor a hidden temporary
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is the command's only


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temp_name(pid: int, kind: str, name: str) -> str:
    from ugcn.io import _host_tag

    return f"{TEMP_PREFIX}{pid}-{_host_tag()}-{kind}.{name}.abc123"


def test_stale_temporaries_of_killed_runs_are_removed_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale_file = tmp_path / _temp_name(dead, "new", "mask.nii.gz")
        stale_file.write_bytes(b"")  # what SIGTERM left before
        stale_dir = tmp_path / _temp_name(dead, "new", "case")
        (stale_dir / "sub").mkdir(parents=True)
        busy = tmp_path / _temp_name(live.pid, "new", "case")
        busy.mkdir()
        users = tmp_path / ".my.notes"  # hidden, but not ours
        users.write_text("keep")
        removed = clean_stale_temporaries(tmp_path)
        assert sorted(removed) == sorted([stale_file, stale_dir])
        assert _hidden(tmp_path) == sorted([".my.notes", busy.name])
    finally:
        live.kill()
        live.wait()


def test_a_swap_killed_between_its_renames_gets_the_old_output_back(tmp_path):
    # SIGKILL after the old folder was moved aside and before the new one was moved in: both are stale
    # temporaries and the output is missing. The next run restores the old output.
    aside = tmp_path / _temp_name(_dead_pid(), "old", "case")
    (aside / "case").mkdir(parents=True)
    (aside / "case" / "report.json").write_text("{}")
    clean_stale_temporaries(tmp_path)
    assert (tmp_path / "case" / "report.json").read_text() == "{}" and _hidden(tmp_path) == []


def test_a_rerun_after_sigkill_cleans_the_output_parent(tmp_path, capsys, run_cli):
    inputs = _refine_inputs(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    leftovers = [tmp_path / _temp_name(_dead_pid(), "new", "out"),
                 out / _temp_name(_dead_pid(), "new", "prediction.nii.gz")]
    leftovers[0].mkdir()
    leftovers[1].write_bytes(b"")
    code, _, err = run_cli(capsys, _refine_argv(inputs, out))
    assert code == 0, err
    assert not any(p.exists() for p in leftovers)
    report = json.loads((out / "report.json").read_text())
    assert sorted(os.listdir(out)) == sorted(report["files"])


# ------------------------------------------------------------------ defect 4: --overwrite replaces whole
def test_overwrite_without_crf_leaves_no_crf_of_the_previous_run(tmp_path, capsys, run_cli):
    from ugcn.refine.crf import crf_available

    inputs = _refine_inputs(tmp_path / "in")
    out = tmp_path / "out"
    if crf_available():
        assert run_cli(capsys, _refine_argv(inputs, out, "--crf"))[0] == 0
    else:  # the same situation by hand: an earlier output with a CRF mask
        assert run_cli(capsys, _refine_argv(inputs, out))[0] == 0
        save_volume(out / "crf.nii.gz", np.zeros((16, 16, 8), np.uint8), AFFINE)
    assert (out / "crf.nii.gz").exists()
    code, _, err = run_cli(capsys, _refine_argv(inputs, out))
    assert code == 2 and "not empty" in _one_line_error(err)  # nothing is replaced without --overwrite
    assert run_cli(capsys, _refine_argv(inputs, out, "--overwrite"))[0] == 0
    report = json.loads((out / "report.json").read_text())
    assert "crf.nii.gz" not in os.listdir(out)
    assert sorted(os.listdir(out)) == sorted(report["files"])
    assert _hidden(tmp_path) == []


def test_overwrite_never_swallows_a_folder_of_other_files(tmp_path, capsys, run_cli):
    inputs = _refine_inputs(tmp_path / "in")
    code, _, err = run_cli(capsys, _refine_argv(inputs, tmp_path / "in", "--overwrite"))
    assert code == 2 and "report.json" in _one_line_error(err)
    assert sorted(os.listdir(tmp_path / "in")) == ["a.nii.gz", "prediction.nii.gz", "samples.nii.gz"]


def test_atomic_directory_replaces_only_a_marked_folder(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="no report.json"):
        with atomic_directory(out, overwrite=True, marker="report.json") as tmp:
            raise AssertionError("not reached")
    (out / "report.json").write_text("{}")
    with atomic_directory(out, overwrite=True, marker="report.json") as tmp:
        (tmp / "report.json").write_text("new")
    assert os.listdir(out) == ["report.json"] and _hidden(tmp_path) == []


# ------------------------------------------------------------------ defect 5: plug-in estimators
PLUGIN = '''
import numpy as np


def margin(samples):
    return 1 - abs(2 * samples.mean(0) - 1)


def fg_margin(p):
    return 1 - abs(2 * p[..., 1].mean(0) - 1)


def broken(stats):
    raise RuntimeError("boom")


def returns_none(stats):
    return None


def uses_numpy(stats):
    return np.asarray(stats.sum_p)[..., 1]
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "issue17_plugins.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "issue17_plugins"


def _samples(shape=(6, 5, 4), t=5) -> np.ndarray:
    fg = np.random.default_rng(1).uniform(0, 1, (t, *shape)).astype(np.float32)
    return np.stack([1 - fg, fg], axis=-1)  # f32[T, X, Y, Z, 2]


def test_an_estimator_written_for_the_samples_is_accepted(plugin):
    from ugcn.uncertainty.estimators import estimator_maps, get_estimator
    from ugcn.uncertainty.stats import stats_from_samples

    samples = _samples()
    expected = 1 - np.abs(2 * samples[..., 1].mean(0) - 1)  # the margin of the foreground, by hand
    by_signature, by_suffix = f"{plugin}:margin", f"{plugin}:fg_margin:samples"
    assert get_estimator(by_signature).needs == "samples" and get_estimator(by_suffix).needs == "samples"
    maps = estimator_maps([by_signature, by_suffix], stats_from_samples(samples), samples)
    np.testing.assert_allclose(maps[by_signature], expected, atol=1e-6)
    np.testing.assert_allclose(maps[by_suffix], expected, atol=1e-6)
    with pytest.raises(ValueError, match="one of"):
        get_estimator(f"{plugin}:margin:voxels")


@pytest.mark.parametrize("fn, says", [
    ("broken", "failed on SampleStats(count=f32[], sum_p=f32[6, 5, 4, 2]"),
    ("returns_none", "returned NoneType; expected a voxel map f32[6, 5, 4]"),
    ("uses_numpy", "use jax.numpy"),
])
def test_a_failing_estimator_is_one_line_naming_it_its_input_and_output(plugin, fn, says):
    from ugcn.uncertainty.estimators import estimator_maps
    from ugcn.uncertainty.stats import stats_from_samples

    samples = _samples()
    with pytest.raises(ValueError) as info:
        estimator_maps([f"{plugin}:{fn}"], stats_from_samples(samples), samples)
    message = str(info.value)
    assert message.startswith(f"estimator '{plugin}:{fn}'") and says in message and "\n" not in message


def test_plugin_estimators_through_mcdo(plugin, tmp_path, capsys, run_cli):
    samples = _samples()
    maps = tmp_path / "maps.nii.gz"
    save_volume(maps, np.moveaxis(samples[..., 1], 0, -1), AFFINE)  # (X, Y, Z, T) foreground maps
    code, _, err = run_cli(capsys, ["mcdo", "--samples", str(maps), "--estimators", f"entropy,{plugin}:broken",
                                 "--out", str(tmp_path / "bad"), "--quiet"])
    line = _one_line_error(err)
    assert code == 2 and f"'{plugin}:broken' failed" in line and "boom" in line
    assert not (tmp_path / "bad").exists()
    code, _, err = run_cli(capsys, ["mcdo", "--samples", str(maps), "--estimators", f"{plugin}:margin",
                                 "--out", str(tmp_path / "ok"), "--quiet"])
    assert code == 0, err
    written = nib.load(str(tmp_path / "ok" / f"{plugin}_margin.nii.gz")).get_fdata()
    np.testing.assert_allclose(written, 1 - np.abs(2 * samples[..., 1].mean(0) - 1), atol=1e-6)


def test_a_per_class_map_is_reduced_like_variance():
    from ugcn.uncertainty.estimators import Estimator, estimator_maps
    from ugcn.uncertainty.stats import stats_from_samples

    per_class = Estimator("per_class_mean", lambda s: s.sum_p / s.count)
    two = _samples()
    np.testing.assert_allclose(estimator_maps([per_class], stats_from_samples(two))["per_class_mean"],
                               two[..., 1].mean(0), atol=1e-6)  # C = 2: the foreground class
    three = np.random.default_rng(2).dirichlet(np.ones(3), size=(4, 6, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(estimator_maps([per_class], stats_from_samples(three))["per_class_mean"],
                               three.mean(0).mean(-1), atol=1e-6)  # C > 2: the class mean


# ------------------------------------------------------------------ defect 6: corrupt headers, warnings
def _claiming(path: Path, shape) -> Path:
    """A small NIfTI whose header claims ``shape`` voxels (dim[1:4] patched in the raw bytes)."""
    import gzip
    import struct

    raw_path = path.with_name("raw.nii")
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), str(raw_path))
    raw = bytearray(raw_path.read_bytes())
    raw[42:48] = struct.pack("<hhh", *shape)  # dim[1], dim[2], dim[3] of the NIfTI-1 header
    raw_path.unlink()
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else bytes(raw))
    return path


@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
def test_a_header_claiming_30000_cubed_voxels_is_refused_before_allocating(tmp_path, capsys, name, run_cli):
    from ugcn.io import load_volume

    path = _claiming(tmp_path / name, (30000, 30000, 30000))
    with pytest.raises(ValueError, match=r"claims 30000x30000x30000 voxels .* more than the .* of memory available"):
        load_volume(path)
    code, _, err = run_cli(capsys, ["refine", "--image", str(path), "--samples", str(path), "--out",
                                 str(tmp_path / "o")])
    assert code == 2 and "30000x30000x30000" in _one_line_error(err)


@pytest.mark.parametrize("name", ["cut.nii", "cut.nii.gz"])
def test_a_truncated_nifti_is_one_line(tmp_path, capsys, name, run_cli):
    from ugcn.io import load_volume

    whole = tmp_path / ("whole" + name[3:])
    save_volume(whole, np.random.default_rng(0).normal(size=(20, 20, 10)).astype(np.float32), AFFINE)
    data = whole.read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_volume(cut)
    code, _, err = run_cli(capsys, ["refine", "--image", str(cut), "--samples", str(cut), "--out", str(tmp_path / "o")])
    assert code == 2 and "truncated" in _one_line_error(err)


def test_warnings_print_as_one_line_without_source(tmp_path, capsys, monkeypatch, run_cli):
    import ugcn.commands.phantoms as phantoms

    def run(args):
        np.float32(1.0) / np.zeros(1, np.float32)  # numpy's RuntimeWarning: divide by zero
        import warnings

        warnings.warn("first line\nsecond line", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(phantoms, "run", run)
    code, _, err = run_cli(capsys, ["phantoms", "ct", str(tmp_path / "w")])
    assert code == 0
    assert err.splitlines() == ["ugcn phantoms: warning: divide by zero encountered in divide (RuntimeWarning)",
                                "ugcn phantoms: warning: first line; second line (UserWarning)"]


def test_a_rerun_after_a_real_sigkill_removes_its_temporaries(tmp_path, capsys, run_cli):
    # A process killed with SIGKILL inside both writers (no handler can run) leaves its hidden temporaries.
    script = (
        "import os, signal, sys\n"
        "from ugcn.io import atomic_directory, atomic_file\n"
        "out = sys.argv[1]\n"
        "with atomic_file(out + '/notes.txt') as f:\n"
        "    f.write_text('half')\n"
        "    with atomic_directory(out + '/ds') as tmp:\n"
        "        (tmp / 'imagesTr').mkdir()\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert len(_hidden(tmp_path)) == 2 and not (tmp_path / "ds").exists()
    argv = ["phantoms", "ct", str(tmp_path / "ds"), "--n", "1", "--shape", "16,16,16", "--quiet"]
    code, _, err = run_cli(capsys, argv)
    assert code == 0, err
    assert os.listdir(tmp_path) == ["ds"]
