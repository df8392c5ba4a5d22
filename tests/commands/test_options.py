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


# ------------------------------------------------------------------ the options of the ugcn commands
def _sphere_case(folder, shape=(20, 20, 14), radius=5.5, n_samples=4):
    """A sphere organ, a prediction wrong in a shell, MC samples uncertain exactly there (written as NIfTI)."""
    import numpy as np

    from ugcn.io import save_volume

    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    r = np.sqrt(((grid - np.array(shape)[:, None, None, None] / 2) ** 2).sum(0))
    label = r < radius
    wrong = (r >= radius - 1.5) & (r < radius) & (grid[0] >= shape[0] / 2)
    prediction = label & ~wrong
    image = (label + np.random.default_rng(0).normal(0, 0.15, shape)).astype(np.float32)
    e = np.where(prediction, 0.97, 0.03).astype(np.float32)
    e[wrong] = 0.4
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    save_volume(folder / "image.nii.gz", image, affine)
    save_volume(folder / "samples.nii.gz", np.repeat(e[..., None], n_samples, -1), affine)
    save_volume(folder / "prediction.nii.gz", prediction.astype(np.uint8), affine)
    save_volume(folder / "label.nii.gz", label.astype(np.uint8), affine)
    return image, prediction, e, label


def _masks(folder):
    import nibabel as nib
    import numpy as np

    return {p.name: np.asarray(nib.load(str(p)).dataobj) for p in sorted(folder.glob("*.nii.gz"))}


def test_refine_flags_reach_the_fit_and_config_reruns_it(tmp_path):
    import numpy as np

    from ugcn.cli import main
    from ugcn.refine.fit import FitConfig
    from ugcn.refine.pipeline import RefineConfig, refine_volume
    from ugcn.uncertainty.measures import entropy, expectation
    from ugcn.uncertainty.sampling import load_sample_maps
    from ugcn.uncertainty.stats import stats_from_samples

    image, prediction, _, label = _sphere_case(tmp_path / "in")
    src = tmp_path / "in"
    inputs = ["--image", str(src / "image.nii.gz"), "--samples", str(src / "samples.nii.gz"),
              "--prediction", str(src / "prediction.nii.gz"), "--label", str(src / "label.nii.gz")]
    flags = ["--tau", "0.5", "--margin", "1", "--k-random", "6", "--lam", "0.25", "--gcn-epochs", "15",
             "--gcn-hidden", "8", "--seed", "2"]
    assert main(["refine", *inputs, *flags, "--out", str(tmp_path / "a"), "--quiet"]) == 0
    # the library with the same settings, called directly, gives the same masks: every flag reached it
    config = RefineConfig(tau=0.5, margin=1, k_random=6, lam=0.25, fit=FitConfig(epochs=15, hidden=8))
    stats = stats_from_samples(load_sample_maps(src / "samples.nii.gz")[0])
    e, u = np.asarray(expectation(stats))[..., 1], np.asarray(entropy(stats))
    expected = refine_volume(image, prediction, e, u, config=config, seed=2, label=label)
    written = _masks(tmp_path / "a")
    files = {"cnn": "prediction.nii.gz"}  # the CNN's mask is written as prediction.nii.gz, like the other commands
    for name, mask in expected.masks().items():
        np.testing.assert_array_equal(written[files.get(name, f"{name}.nii.gz")], mask, err_msg=name)
    # ... and the defaults give other masks (the settings matter on this case)
    default = refine_volume(image, prediction, e, u, seed=2, label=label)
    assert any(not np.array_equal(default.masks()[k], expected.masks()[k]) for k in ("refined", "refined_unlabelled"))
    # --config reruns the recorded configuration: the same masks and numbers
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert main(["refine", *inputs, "--config", str(tmp_path / "a" / "report.json"), "--out", str(tmp_path / "b"),
                 "--quiet"]) == 0
    rerun = json.loads((tmp_path / "b" / "report.json").read_text())
    assert rerun["config"] == report["config"] and rerun["seed"] == 2 and rerun["dice"] == report["dice"]
    for name, mask in _masks(tmp_path / "b").items():
        np.testing.assert_array_equal(mask, written[name], err_msg=name)
    # an explicit flag overrides the recorded value
    assert main(["refine", *inputs, "--config", str(tmp_path / "a" / "report.json"), "--gcn-epochs", "3",
                 "--out", str(tmp_path / "c"), "--quiet"]) == 0
    changed = json.loads((tmp_path / "c" / "report.json").read_text())["config"]
    assert changed["fit"]["epochs"] == 3 and changed["tau"] == 0.5


REFINE = ["refine", "--image", "i.nii.gz", "--samples", "s.nii.gz", "--out", "o"]
REFINE_BATCH = ["refine-batch", "--images", "d", "--samples-dir", "s", "--out", "o"]
TRAIN = ["train", "--data", "d", "--out", "o"]
MCDO = ["mcdo", "--model", "m", "--image", "i.nii.gz", "--out", "o"]
FIT = ["lesions", "fit", "--data", "d", "--model", "m", "--out", "o"]
SCORE = ["lesions", "score", "--image", "i.nii.gz", "--model", "m", "--lesion-model", "l", "--out", "o"]


@pytest.mark.parametrize(
    "argv, line",
    [
        (REFINE + ["--margin", "-5"], "ugcn refine: error: --margin must be a non-negative integer, got -5"),
        (REFINE + ["--tau", "nan"], "ugcn refine: error: --tau must be a non-negative finite number, got nan"),
        (REFINE + ["--tau", "-1"], "ugcn refine: error: --tau must be a non-negative finite number, got -1.0"),
        (REFINE + ["--seed", "-1"], "ugcn refine: error: --seed must be a non-negative integer, got -1"),
        (REFINE + ["--n-samples", "0"], "ugcn refine: error: --n-samples must be a positive integer, got 0"),
        (REFINE + ["--chunk", "0"], "ugcn refine: error: --chunk must be a positive integer, got 0"),
        (REFINE + ["--lam", "inf"], "ugcn refine: error: --lam must be a non-negative finite number, got inf"),
        (REFINE + ["--k-random", "-2"], "ugcn refine: error: --k-random must be a non-negative integer, got -2"),
        (REFINE_BATCH + ["--batch-size", "0"],
         "ugcn refine-batch: error: --batch-size must be a positive integer, got 0"),
        (REFINE_BATCH + ["--devices", "0"], "ugcn refine-batch: error: --devices must be a positive integer, got 0"),
        (TRAIN + ["--unet-epochs", "0"], "ugcn train: error: --unet-epochs must be a positive integer, got 0"),
        (TRAIN + ["--unet-dropout", "1"], "ugcn train: error: --unet-dropout must be a number in [0, 1), got 1.0"),
        (TRAIN + ["--unet-learning-rate", "-0.001"],
         "ugcn train: error: --unet-learning-rate must be a positive finite number, got -0.001"),
        (TRAIN + ["--max-volumes", "0"], "ugcn train: error: --max-volumes must be a positive integer, got 0"),
        (MCDO + ["--n-samples", "0"], "ugcn mcdo: error: --n-samples must be a positive integer, got 0"),
        (MCDO + ["--tta-max-shift", "-1"], "ugcn mcdo: error: --tta-max-shift must be a non-negative integer, got -1"),
        (MCDO + ["--seed", "4294967296"], "ugcn mcdo: error: --seed must be a non-negative integer <= 4294967295, "
                                          "got 4294967296"),
        (FIT + ["--gcnn-epochs", "0"], "ugcn lesions: error: --gcnn-epochs must be a positive integer, got 0"),
        (FIT + ["--gcnn-lr-start", "nan"],
         "ugcn lesions: error: --gcnn-lr-start must be a positive finite number, got nan"),
        (SCORE + ["--n-samples", "-3"], "ugcn lesions: error: --n-samples must be a positive integer, got -3"),
        (SCORE + ["--devices", "0"], "ugcn lesions: error: --devices must be a positive integer, got 0"),
        (["estimators", "compare", "--quick", "--out", "o", "--r-sweep", "0.8,1.5"],
         "ugcn estimators: error: --r-sweep must be a number in [0, 1], got 1.5"),
        (["estimators", "compare", "--quick", "--out", "o", "--r-sweep", "0.8,x"],
         "ugcn estimators: error: --r-sweep: expected a number, got 'x'"),
        (["estimators", "compare", "--quick", "--out", "o", "--gcn-epochs", "0"],
         "ugcn estimators: error: --gcn-epochs must be a positive integer, got 0"),
        (["lesions", "evaluate", "--data", "d", "--out", "o", "--unet-dropout", "-0.1"],
         "ugcn lesions: error: --unet-dropout must be a number in [0, 1), got -0.1"),
        (["lesions", "evaluate", "--data", "d", "--out", "o", "--folds", "1"],
         "ugcn lesions: error: --folds must be an integer >= 2, got 1"),
        (["demo", "--seed", "-1"], "ugcn demo: error: --seed must be a non-negative integer, got -1"),
        (["phantoms", "ct", "o", "--n", "1001"],
         "ugcn phantoms: error: --n must be a positive integer <= 1000, got 1001"),
    ],
)
def test_every_bad_number_of_a_command_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, line):
    from ugcn.cli import main

    monkeypatch.chdir(tmp_path)
    if line is None:
        from ugcn.cli import build_parser

        resolve_options(build_parser().parse_args(argv))
        return
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == line + "\n" and captured.out == ""
    assert list(tmp_path.iterdir()) == []  # rejected before any work


def test_help_of_every_command_is_plain_text(capsys):
    from ugcn.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    seen = 0
    for name, sub in subparsers.choices.items():
        parsers = [sub] + [p for a in sub._actions if isinstance(a, argparse._SubParsersAction)
                           for p in a.choices.values()]
        for p in parsers:
            text = p.format_help()
            seen += 1
            for markup in ("``", ":func:", ":class:", ":mod:", ":data:", "METHOD.md", "../"):
                assert markup not in text, (name, p.prog, markup)
    assert seen >= 10


def test_crf_preset_then_single_flags_then_config_file(tmp_path):
    from ugcn.cli import build_parser
    from ugcn.refine.crf import REFERENCE_CRF, CRFConfig

    def crf(*argv):
        return resolve_options(build_parser().parse_args([*REFINE, *argv])).refine_config.crf

    assert crf() == CRFConfig()
    assert crf("--crf-preset", "reference") == REFERENCE_CRF
    assert crf("--crf-preset", "reference", "--crf-unary", "expectation") == dataclasses.replace(
        REFERENCE_CRF, unary="expectation")
    assert crf("--crf-iterations", "3") == CRFConfig(iterations=3)
    from ugcn.config import config_to_dict

    path = tmp_path / "report.json"
    path.write_text(json.dumps({"config": {"crf": config_to_dict(REFERENCE_CRF)}}))
    assert crf("--config", str(path)) == REFERENCE_CRF  # the recorded CRF
    assert crf("--config", str(path), "--crf-preset", "tuned") == CRFConfig()  # an explicit preset wins
    with pytest.raises(ValueError, match=r"^--crf-floor must be a number in \(0, 0.5\), got 0.5$"):
        crf("--crf-floor", "0.5")


def test_lesions_evaluate_config_reads_the_recorded_protocol(tmp_path):
    from ugcn.cli import build_parser
    from ugcn.config import config_to_dict
    from ugcn.experiments.lesion_protocol import LesionProtocolConfig

    recorded = LesionProtocolConfig(folds=3, mc_samples=7, unet_epochs=2, unet_patch=(8, 8, 8), gcnn_epochs=5,
                                    estimators=("entropy",), write_cases=False)
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"table": [], "config": config_to_dict(recorded)}))
    base = ["lesions", "evaluate", "--data", "d", "--out", "o", "--config", str(path)]
    assert resolve_options(build_parser().parse_args(base)).protocol_config == recorded
    args = resolve_options(build_parser().parse_args(base + ["--unet-epochs", "4", "--cases"]))
    assert args.protocol_config == dataclasses.replace(recorded, unet_epochs=4, write_cases=True)


@dataclasses.dataclass(frozen=True)
class Variant:
    """A record without a flag."""

    name: str = "a"


@dataclasses.dataclass(frozen=True)
class WithPresets:
    """Settings with presets.

    Attributes:
      tau: threshold.
    """

    tau: float = 0.8
    variants: tuple = (Variant("a"),)
    fit: Fit = Fit()


SAFE = WithPresets()
REFERENCE = WithPresets(tau=0.1, variants=(), fit=Fit(epochs=9))


def _preset_parser():
    parser = argparse.ArgumentParser(prog="ugcn toy")
    add_config_options(parser, WithPresets, name="cfg", record="config",
                       presets={"": ({"safe": SAFE, "reference": REFERENCE}, "method preset"),
                                "fit": ({"plain": Fit(), "long": Fit(epochs=500)}, "fit preset")})
    add_config_file_option(parser)
    return parser


def test_root_and_nested_presets(tmp_path):
    def cfg(*argv):
        return resolve_options(_preset_parser().parse_args(list(argv))).cfg

    assert cfg() == SAFE
    assert cfg("--preset", "reference") == WithPresets(tau=0.1, variants=(), fit=Fit(epochs=9))  # fields w/o flag too
    assert cfg("--preset", "reference", "--tau", "0.3") == dataclasses.replace(REFERENCE, tau=0.3)
    assert cfg("--preset", "reference", "--fit-preset", "long") == dataclasses.replace(REFERENCE, fit=Fit(epochs=500))
    from ugcn.config import config_to_dict

    path = tmp_path / "report.json"
    path.write_text(json.dumps({"config": config_to_dict(REFERENCE)}))
    assert cfg("--config", str(path)) == REFERENCE  # the record, variants included
    assert cfg("--config", str(path), "--preset", "safe") == SAFE  # an explicit preset wins over the record
    assert cfg("--config", str(path), "--fit-epochs", "2") == dataclasses.replace(REFERENCE, fit=Fit(epochs=2))


@dataclasses.dataclass(frozen=True)
class Signed:
    """Settings that may be negative.

    Attributes:
      shift: a number of at least -10.
      offsets: numbers of at least -10.
    """

    shift: float = setting(0.0, min=-10.0)
    offsets: tuple[float, ...] = setting((0.0,), min=-10.0)


@pytest.mark.parametrize("text, value", [("-1e-3", -1e-3), ("-2.5E+0", -2.5), ("-.5", -0.5), ("-3", -3.0),
                                         ("-1.e-2", -1e-2)])
def test_negative_numbers_follow_a_flag_without_an_equals_sign(text, value):
    parser = argparse.ArgumentParser(prog="ugcn toy")
    add_config_options(parser, Signed, name="signed")
    args = resolve_options(parser.parse_args(["--shift", text, "--offsets", "1", text]))
    assert args.signed == Signed(shift=value, offsets=(1.0, value))
    # a value out of bounds still names the flag (argparse no longer takes "-1e3" for an option)
    with pytest.raises(ValueError, match="--shift must be a finite number >= -10, got -1000.0"):
        resolve_options(parser.parse_args(["--shift", "-1e3"]))


def test_negative_numbers_through_the_ugcn_parser(capsys):
    from ugcn.cli import build_parser, main

    args = build_parser().parse_args(["refine", "--image", "x", "--samples", "y", "--out", "o", "--lam", "-1e-3"])
    assert args.lam == -1e-3
    assert main(["refine", "--image", "x", "--samples", "y", "--out", "o", "--lam", "-1e-3"]) == 2
    assert "--lam must be a non-negative finite number, got -0.001" in capsys.readouterr().err
