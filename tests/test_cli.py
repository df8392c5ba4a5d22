"""The ``ugcn`` command line (ugcn.cli): help, version, one-line errors with exit code 2, the compilation cache."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ugcn import __version__
from ugcn.cli import COMMAND_MODULES
from ugcn.data import find_cases, load_case
from ugcn.io import save_volume

SMALL = ["--shape", "24,24,16", "--quiet"]


def test_phantoms_command_is_registered():
    assert "ugcn.commands.phantoms" in COMMAND_MODULES


def test_help_lists_commands(capsys, run_cli):
    code, out, _ = run_cli(capsys, ["--help"])
    assert code == 0
    assert "phantoms" in out and "usage: ugcn" in out


def test_version(capsys, run_cli):
    code, out, err = run_cli(capsys, ["--version"])
    assert code == 0
    assert __version__ in out + err


def test_no_command_prints_help_and_exits_2(capsys, run_cli):
    code, _, err = run_cli(capsys, [])
    assert code == 2 and "usage" in err


def test_existing_output_refused_without_overwrite(tmp_path, capsys, run_cli):
    out_dir = str(tmp_path / "ds")
    assert run_cli(capsys, ["phantoms", "ct", out_dir, "--n", "1", *SMALL])[0] == 0
    before = sorted(p.name for p in Path(out_dir, "imagesTr").iterdir())
    code, _, err = run_cli(capsys, ["phantoms", "ct", out_dir, "--n", "2", *SMALL])
    assert code == 2
    assert err.count("\n") == 1 and "--overwrite" in err and "Traceback" not in err
    assert sorted(p.name for p in Path(out_dir, "imagesTr").iterdir()) == before
    assert run_cli(capsys, ["phantoms", "ct", out_dir, "--n", "2", "--overwrite", *SMALL])[0] == 0
    assert len(find_cases(out_dir)) == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["phantoms", "ct", "X", "--n", "zero"],
        ["phantoms", "liver", "X"],
        ["phantoms", "ct"],
        ["phantoms", "ct", "X", "--shape", "1,2"],
        ["no-such-command"],
        ["phantoms", "ct", "X", "--bogus"],
    ],
)
def test_bad_arguments_one_line_exit_2(tmp_path, capsys, argv, run_cli):
    argv = [str(tmp_path / a) if a == "X" else a for a in argv]
    code, _, err = run_cli(capsys, argv)
    assert code == 2
    assert err.strip().count("\n") == 0 and "error" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["--n", "0"], ["--shape", "8,8,8", "--n", "1"]])
def test_bad_values_one_line_exit_2(tmp_path, capsys, argv, run_cli):
    code, _, err = run_cli(capsys, ["phantoms", "ct", str(tmp_path / "o"), "--quiet", *argv])
    assert code == 2
    assert err.strip().count("\n") == 0 and err.startswith("ugcn phantoms: error:")
    assert not (tmp_path / "o").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind


def test_corrupt_nifti_through_reader_gives_one_line(tmp_path):
    # No other command of this helper reads NIfTI: check the error path of the data reader that commands use,
    # and that the CLI's handler turns it into one line with exit code 2.
    ds = tmp_path / "ds"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    (ds / "imagesTr" / "a.nii.gz").write_bytes(b"this is not a nifti file at all")
    save_volume(ds / "labelsTr" / "a.nii.gz", np.zeros((4, 4, 4), np.uint8), np.eye(4))
    (case,) = find_cases(ds)
    with pytest.raises(ValueError, match="a.nii.gz: cannot read NIfTI"):
        load_case(case)


def test_value_error_in_a_command_is_one_line(capsys, monkeypatch, run_cli):
    import ugcn.commands.phantoms as phantoms

    def boom(args):
        raise ValueError("/data/x.nii.gz: shape (4, 4, 5) does not match /data/y.nii.gz shape (4, 4, 4)")

    monkeypatch.setattr(phantoms, "run", boom)
    code, _, err = run_cli(capsys, ["phantoms", "ct", "somewhere"])
    assert code == 2
    assert err == ("ugcn phantoms: error: /data/x.nii.gz: shape (4, 4, 5) does not match /data/y.nii.gz "
                   "shape (4, 4, 4)\n")


def test_entry_point_subprocess(tmp_path):
    exe = Path(sys.executable).with_name("ugcn")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ugcn.cli"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    ok = subprocess.run([*cmd, "phantoms", "brain", str(tmp_path / "b"), "--n", "1", "--shape", "32,32,24"],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "wrote 1 brain phantom cases" in ok.stdout
    bad = subprocess.run([*cmd, "phantoms", "ct", str(tmp_path / "b"), "--n", "1", "--quiet"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


@pytest.mark.skipif("ugcn.commands.mcdo" not in COMMAND_MODULES, reason="no command reading NIfTI is registered")
def test_corrupt_nifti_through_a_command_exits_2(tmp_path, capsys, run_cli):
    bad = tmp_path / "maps.nii.gz"
    bad.write_bytes(b"garbage, not a NIfTI file")
    code, _, err = run_cli(capsys, ["mcdo", "--samples", str(bad), "--out", str(tmp_path / "o")])
    assert code == 2
    assert err.strip().count("\n") == 0 and "maps.nii.gz" in err and "Traceback" not in err


def test_compilation_cache_location_follows_environment(monkeypatch, tmp_path):
    from ugcn.cli import CACHE_ENV, compilation_cache_dir

    for off in ("off", "0", "OFF", "no"):
        monkeypatch.setenv(CACHE_ENV, off)
        assert compilation_cache_dir() is None
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert compilation_cache_dir() == tmp_path / "c"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation_cache_dir() == tmp_path / "xdg" / "ugcn" / "jax"


def test_cli_run_switches_on_the_compilation_cache(monkeypatch, tmp_path):
    import jax

    from ugcn import cli

    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv(cli.CACHE_ENV, str(tmp_path / "cache"))
    try:
        assert cli.main(["phantoms", "ct", str(tmp_path / "ct"), "--n", "1", "--shape", "32,32,16", "--quiet"]) == 0
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
        assert (tmp_path / "cache").is_dir()
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
