"""ugcn.commands.options: flags generated from config dataclasses, checked values, --config FILE."""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Optional

import pytest

from ugcn.commands.options import Sampling, add_config_file_option, add_config_options, resolve_options
from ugcn.config import setting


@dataclasses.dataclass(frozen=True)
class Fit:
    """Fit settings.

    Attributes:
      epochs: training epochs.
    """

    epochs: int = setting(200, min=1)
    rate: float = setting(1e-2, gt=0, help="Adam step size")


@dataclasses.dataclass(frozen=True)
class Toy:
    """Toy method settings.

    Attributes:
      tau: uncertainty threshold, ``U > tau``.
    """

    tau: float = 0.8
    margin: int = 0
    dilation: tuple = (5, 7, 7)
    max_nodes: Optional[int] = 2_000_000
    names: tuple[str, ...] = ("entropy",)
    mode: str = setting("absolute", choices=("absolute", "quantile"))
    row_normalize: bool = False
    hidden_thing: int = setting(3, cli=False)
    records: tuple = (Fit(epochs=1),)  # not expressible on a command line: no flag, default kept
    fit: Fit = setting(Fit(), prefix="gcn-")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ugcn toy")
    add_config_options(parser, Toy, name="toy", record="config")
    add_config_options(parser, Sampling, name="sampling", defaults={"n_samples": 8})
    add_config_file_option(parser)
    return parser


def _resolve(argv):
    return resolve_options(_parser().parse_args(argv))


def test_flags_reach_the_config_with_their_types():
    args = _resolve(["--tau", "0.5", "--margin", "3", "--dilation", "1", "2", "3", "--max-nodes", "none",
                     "--names", "a,b", "c", "--mode", "quantile", "--row-normalize", "--gcn-epochs", "7",
                     "--gcn-rate", "0.1", "--seed", "4"])
    assert args.toy == Toy(tau=0.5, margin=3, dilation=(1, 2, 3), max_nodes=None, names=("a", "b", "c"),
                           mode="quantile", row_normalize=True, fit=Fit(epochs=7, rate=0.1))
    assert args.sampling == Sampling(n_samples=8, chunk=4, seed=4)  # the command's default 8, not 20
    assert (args.tau, args.gcn_epochs, args.seed, args.n_samples) == (0.5, 7, 4, 8)


def test_defaults_without_flags():
    args = _resolve([])
    assert args.toy == Toy() and args.sampling == Sampling(n_samples=8)
    assert args.max_nodes == 2_000_000 and args.gcn_epochs == 200


def test_int_flags_accept_integral_scientific_notation():
    assert _resolve(["--max-nodes", "2e5"]).toy.max_nodes == 200_000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--margin", "-5"], "--margin must be a non-negative integer, got -5"),
        (["--tau", "nan"], "--tau must be a non-negative finite number, got nan"),
        (["--tau", "-1"], "--tau must be a non-negative finite number, got -1.0"),
        (["--tau", "inf"], "--tau must be a non-negative finite number, got inf"),
        (["--seed", "-1"], "--seed must be a non-negative integer, got -1"),
        (["--n-samples", "0"], "--n-samples must be a positive integer, got 0"),
        (["--gcn-epochs", "0"], "--gcn-epochs must be a positive integer, got 0"),
        (["--gcn-rate", "0"], "--gcn-rate must be a positive finite number, got 0.0"),
        (["--dilation", "1", "-2", "3"], "--dilation must be a non-negative integer, got -2"),
        (["--max-nodes", "-3"], "--max-nodes must be a non-negative integer, got -3"),
    ],
)
def test_every_bad_number_is_one_line_naming_the_flag(argv, message):
    with pytest.raises(ValueError) as err:
        _resolve(argv)
    assert str(err.value) == message


def test_unparseable_values_are_argparse_errors_naming_the_flag(capsys):
    for argv in (["--seed", "x"], ["--seed", "1.5"], ["--mode", "z"]):
        with pytest.raises(SystemExit) as exit_:
            _parser().parse_args(argv)
        assert exit_.value.code == 2
        assert f"argument {argv[0]}" in capsys.readouterr().err


def test_hidden_fields_have_no_flag_and_keep_their_default():
    with pytest.raises(SystemExit):
        _parser().parse_args(["--hidden-thing", "4"])
    assert _resolve([]).toy.hidden_thing == 3
    assert _resolve([]).toy.records == (Fit(epochs=1),)


def test_help_is_plain_text_with_defaults_and_bounds():
    text = _parser().format_help()
    assert "uncertainty threshold, U > tau (a non-negative finite number; default 0.8)" in " ".join(text.split())
    assert "Adam step size (a positive finite number; default 0.01)" in " ".join(text.split())
    assert "``" not in text and ":func:" not in text
    assert "--no-row-normalize" in text


def test_config_file_supplies_unset_values_and_flags_override(tmp_path):
    report = {"ugcn_version": "x", "seed": 3, "n_samples": 5, "status": "refined",
              "config": {"tau": 0.4, "margin": 2, "dilation": [1, 1, 1], "max_nodes": None, "mode": "quantile",
                         "names": ["a"], "row_normalize": True, "fit": {"epochs": 9, "rate": 0.5},
                         "removed_in_a_later_version": 1}}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    args = _resolve(["--config", str(path), "--margin", "6", "--no-row-normalize"])
    assert args.toy == Toy(tau=0.4, margin=6, dilation=(1, 1, 1), max_nodes=None, names=("a",), mode="quantile",
                           row_normalize=False, fit=Fit(epochs=9, rate=0.5))
    assert args.sampling == Sampling(n_samples=5, chunk=4, seed=3)  # top-level keys; chunk not recorded


def test_config_round_trip_includes_fields_without_a_flag(tmp_path):
    from ugcn.config import config_to_dict

    recorded = Toy(tau=0.3, hidden_thing=9, records=(Fit(epochs=2), Fit(epochs=3, rate=0.2)), fit=Fit(epochs=4))
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"config": config_to_dict(recorded), "seed": 1}))
    args = _resolve(["--config", str(path)])
    assert args.toy == recorded
    assert args.sampling == Sampling(n_samples=8, chunk=4, seed=1)


def test_config_file_values_are_checked_and_named(tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"config": {"fit": {"epochs": 0}}}))
    with pytest.raises(ValueError) as err:
        _resolve(["--config", str(path)])
    assert str(err.value) == f"--config {path}: config.fit.epochs must be a positive integer, got 0"
    for text, expected in (("{not json", "not a readable JSON file"), ("[1, 2]", "expected a JSON object")):
        path.write_text(text)
        with pytest.raises(ValueError, match=expected):
            _resolve(["--config", str(path)])
    with pytest.raises(ValueError, match="no such file"):
        _resolve(["--config", str(tmp_path / "missing.json")])
