"""Shared test set-up: CPU, no compilation cache, and the data builders more than one test module uses.

Builders are plain functions (so ``tests/parallel/sharding_checks.py``, a subprocess script, can import them)
and are handed to tests as session fixtures of the same short name; no test module imports another.
"""
import os

import numpy as np
import pytest
from scipy import ndimage

# Tests run on the CPU with one device; tests that need several devices start a subprocess.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
# The CLI keeps compiled programs on disk between runs; tests stay hermetic without it.
os.environ.setdefault("UGCN_COMPILATION_CACHE", "off")


# ---------------------------------------------------------------- method R: a synthetic sphere organ
def build_sphere_case(shape=(24, 24, 16), radius=6.5, seed=0, band=True):
    """:func:`ugcn.data.uncertain_band_case`: image, prediction, expectation, uncertainty (bits), label."""
    from ugcn.data import uncertain_band_case

    return uncertain_band_case(shape, radius, seed, band)


def write_sphere_case(folder, stem, case, n_samples=4):
    from ugcn.io import save_volume

    image, prediction, expectation, uncertainty, label = case
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    save_volume(folder / f"{stem}.nii.gz", image, affine)
    samples = np.repeat(expectation[..., None], n_samples, axis=-1)  # entropy of E = the designed U
    (folder / "samples").mkdir(exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    (folder / "predictions").mkdir(exist_ok=True)
    save_volume(folder / "samples" / f"{stem}.nii.gz", samples.astype(np.float32), affine)
    save_volume(folder / "labels" / f"{stem}.nii.gz", label.astype(np.uint8), affine)
    save_volume(folder / "predictions" / f"{stem}.nii.gz", prediction.astype(np.uint8), affine)


def count_neighbours(mask):
    """Plain numpy reference for the refinement rules: per voxel, how many voxels of its 3x3x3 neighbourhood (itself
    included) are set in ``mask`` (outside the volume counts as 0): ``int[X, Y, Z]``."""
    padded = np.pad(np.asarray(mask).astype(int), 1)
    x, y, z = np.asarray(mask).shape
    return sum(padded[1 + dx : 1 + dx + x, 1 + dy : 1 + dy + y, 1 + dz : 1 + dz + z]
               for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1))


@pytest.fixture(scope="session")
def neighbour_counts():
    return count_neighbours


@pytest.fixture(scope="session")
def sphere_case():
    """:func:`build_sphere_case`."""
    return build_sphere_case


@pytest.fixture(scope="session")
def write_case():
    """:func:`write_sphere_case`."""
    return write_sphere_case


# ---------------------------------------------------------------- method L: lesions that follow a rule
def build_lesion_rule_data(seed, cells=6, cell=5):
    """Lesion graphs and ``IoU_adj`` targets of a synthetic rule: FP iff the lesion's entropy is high.

    Lesions of 1-8 voxels, one per 5^3 cell; each cell has its own entropy level h.
    """
    from ugcn.graph.lesion_graph import build_lesion_graphs  # here: importing conftest stays jax-free
    from ugcn.lesion.components import label_lesions

    rng = np.random.default_rng(seed)
    shape = (cells * cell,) * 3
    pred = np.zeros(shape, np.uint8)
    level = np.zeros(shape, np.float32)
    for i, j, k in np.ndindex(cells, cells, cells):
        a, b, c = (1 + rng.integers(0, 2, 3))
        x, y, z = i * cell + 1, j * cell + 1, k * cell + 1
        pred[x : x + a, y : y + b, z : z + c] = 1
        level[i * cell : (i + 1) * cell, j * cell : (j + 1) * cell, k * cell : (k + 1) * cell] = rng.random()
    labels, n = label_lesions(pred)
    maps = {
        "entropy": level + 0.05 * rng.random(shape, np.float32),
        "variance": 0.01 * rng.random(shape, np.float32),
        "one_minus_pcs": rng.random(shape, np.float32) * 0.5,
    }
    names = ("entropy", "variance", "one_minus_pcs")
    graphs = build_lesion_graphs(labels, n, rng.normal(size=shape), pred, maps, names)
    lesion_level = np.array([level[labels == k].mean() for k in range(1, n + 1)])
    iou = np.where(lesion_level > 0.5, 0.0, 1.0 - 0.5 * lesion_level)
    return graphs, iou.astype(np.float32)


@pytest.fixture(scope="session")
def lesion_rule_data():
    """:func:`build_lesion_rule_data`."""
    return build_lesion_rule_data


# ---------------------------------------------------------------- method L: a folder of labelled cases
def build_lesion_cases(folder, n, seed, shape=(16, 16, 12)):
    """``n`` labelled cases with 4 small box lesions each (image = 2 x label + noise), Decathlon layout."""
    from ugcn.io import save_volume

    rng = np.random.default_rng(seed)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for i in range(n):
        label = np.zeros(shape, np.uint8)
        for _ in range(4):
            x, y, z = rng.integers(1, 10, 3)
            label[x : x + 3, y : y + 3, z : z + 2] = 1
        image = 0.1 * rng.normal(size=shape).astype(np.float32) + 2 * label
        save_volume(folder / "imagesTr" / f"c{i}.nii.gz", image, np.eye(4))
        save_volume(folder / "labelsTr" / f"c{i}.nii.gz", label, np.eye(4))


@pytest.fixture(scope="session")
def write_lesion_cases():
    """:func:`build_lesion_cases`."""
    return build_lesion_cases


# ---------------------------------------------------------------- estimator comparison: a phantom where one
# estimator ("cmp_informative") knows where the prediction is wrong and another ("cmp_noise") is noise.
# The estimators are functions of jax arrays; jax is imported inside them, so importing conftest stays jax-free.
COMPARISON_SHAPE = (24, 24, 24)
COMPARISON_T = 4


def _ball(centre, radius):
    grid = np.indices(COMPARISON_SHAPE).astype(np.float32)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def build_comparison_case(i: int):
    """Organ (ball) + small lesions; the prediction shifts the organ, misses a lesion and adds two FP blobs.

    Samples: ``E`` = 0.8 / 0.2 everywhere (so entropy, PCS... know nothing of the errors); the samples spread
    ±0.15 around ``E`` at wrong voxels and ±0.02 elsewhere, which the "informative" estimator reads.
    """
    rng = np.random.default_rng(i)
    centre = np.array([12, 12, 12]) + rng.integers(-1, 2, 3)
    organ = _ball(centre, 6.5)
    lesions = [_ball(c, 2) for c in ([4, 4, 4], [19, 4, 19], [4, 19, 19])]
    label = organ | lesions[0] | lesions[1] | lesions[2]
    shift = np.roll(organ, 1 + i % 2, axis=i % 3)
    corners = [[19, 19, 4], [4, 19, 5], [19, 5, 10], [12, 20, 3]]
    a, b = rng.choice(len(corners), 2, replace=False)
    fp = _ball(corners[a], 2) | _ball(corners[b], 1.5)
    pred = shift | lesions[0] | lesions[1] | fp
    wrong = pred != label
    e = np.where(pred, 0.8, 0.2).astype(np.float32)
    spread = np.where(wrong, 0.15, 0.02).astype(np.float32)
    signs = np.array([1, -1, 1, -1], np.float32).reshape(COMPARISON_T, 1, 1, 1)
    fg = np.clip(e[None] + signs * spread[None], 0.0, 1.0)
    samples = np.stack([1 - fg, fg], axis=-1).astype(np.float32)
    image = (label.astype(np.float32) + 0.1 * rng.standard_normal(COMPARISON_SHAPE)).astype(np.float32)
    return f"case_{i}", image, label.astype(np.uint8), samples, wrong


def _noise_field(stats, seed):
    """Uniform noise ``f32[X, Y, Z]``, different for every case (the key folds in a checksum of the data)."""
    import jax
    import jax.numpy as jnp

    fg = stats.sum_p2[..., 1]
    checksum = (jnp.sum(fg * jnp.arange(fg.size).reshape(stats.sum_p2.shape[:-1]) % 7) * 1000).astype(jnp.int32)
    return jax.random.uniform(jax.random.fold_in(jax.random.PRNGKey(seed), checksum), stats.sum_p.shape[:-1])


def _informative(stats):
    """Sample standard deviation of the foreground plus uniform noise of amplitude 0.2."""
    import jax.numpy as jnp

    mean = stats.sum_p[..., 1] / stats.count
    std = jnp.sqrt(jnp.maximum(stats.sum_p2[..., 1] / stats.count - mean**2, 0.0))
    return std + 0.2 * _noise_field(stats, 0)


def _noise(stats):
    """Pure noise."""
    return _noise_field(stats, 1)


def _sample_spread(samples):
    """Max minus min of the foreground over the samples (needs the samples)."""
    return samples[..., 1].max(0) - samples[..., 1].min(0)


@pytest.fixture(scope="module")
def comparison_estimators():
    """Registers cmp_informative, cmp_noise (stats) and cmp_spread (samples) for one test module."""
    from ugcn.uncertainty import register_estimator, unregister_estimator

    names = {"cmp_informative": (_informative, "stats"), "cmp_noise": (_noise, "stats"),
             "cmp_spread": (_sample_spread, "samples")}
    for name, (fn, needs) in names.items():
        register_estimator(name, fn=fn, needs=needs, overwrite=True)
    yield list(names)
    for name in names:
        unregister_estimator(name)


@pytest.fixture(scope="session")
def comparison_phantom():
    """Four cases of :func:`build_comparison_case`."""
    return [build_comparison_case(i) for i in range(4)]


@pytest.fixture(scope="session")
def comparison_noise_field():
    """The noise field of the comparison estimators: ``(stats, seed) -> f32[X, Y, Z]``."""
    return _noise_field


# ---------------------------------------------------------------- segmentation: a blurred ellipsoid
def build_blob_volume(seed: int, shape=(21, 18, 9)):
    """A blurred ellipsoid plus noise, and its mask (independent of ugcn.data)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float32)
    centre = np.asarray(shape) / 2 + rng.uniform(-1.5, 1.5, 3)
    radii = np.asarray(shape) * rng.uniform(0.22, 0.3, 3)
    label = (np.sum(((grid - centre) / radii) ** 2, -1) <= 1).astype(np.uint8)
    image = ndimage.gaussian_filter(label.astype(np.float32) * 100.0, 1.0) + rng.normal(0, 15, shape)
    return (image + 20.0).astype(np.float32), label


@pytest.fixture(scope="session")
def blob_volume():
    """:func:`build_blob_volume`."""
    return build_blob_volume


# ---------------------------------------------------------------- test-time augmentation: a numpy reference
def build_tta_reference(model, image, transforms, max_shift):
    """Independent reference: one numpy pass per transform (edge-pad, flip, roll; roll back, flip back, crop)."""
    out = []
    for row in transforms:
        pad = [max_shift if row_axis_shifted else 0 for row_axis_shifted in (True, True, False)]
        x = np.pad(np.asarray(image, np.float64), [(p, p) for p in pad], mode="edge")
        for axis in range(3):
            if row[axis]:
                x = np.flip(x, axis)
        x = np.roll(x, tuple(row[3:6]), axis=(0, 1, 2))
        y = np.roll(model(x), tuple(-row[3:6]), axis=(0, 1, 2))
        for axis in range(3):
            if row[axis]:
                y = np.flip(y, axis)
        out.append(y[pad[0]:y.shape[0] - pad[0], pad[1]:y.shape[1] - pad[1]])
    return np.stack(out)


@pytest.fixture(scope="session")
def np_tta_samples():
    """:func:`build_tta_reference`."""
    return build_tta_reference


# ---------------------------------------------------------------- uncertainty: random class probabilities
def build_random_samples(rng, t, shape, c, *, exact_fraction=0.3):
    """Random class probabilities with a fraction of voxels exactly one-hot (p = 0 and p = 1)."""
    logits = rng.normal(size=(t,) + shape + (c,)) * 3
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    onehot = np.eye(c)[rng.integers(0, c, size=(t,) + shape)]
    exact = rng.random(shape) < exact_fraction  # same voxels exact in every sample
    exact_some = rng.random((t,) + shape) < exact_fraction  # exact in some samples only
    p = np.where((exact[None] | exact_some)[..., None], onehot, p)
    return p.astype(np.float32)


@pytest.fixture(scope="session")
def random_samples():
    """:func:`build_random_samples`."""
    return build_random_samples


# ---------------------------------------------------------------- the command line, in-process
def run_cli_in_process(capsys, argv):
    """``ugcn.cli.main(argv)`` in-process: ``(exit code, stdout, stderr)``; argparse's SystemExit gives its code."""
    from ugcn.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def run_cli():
    """:func:`run_cli_in_process`."""
    return run_cli_in_process


# ---------------------------------------------------------------- the folder commands: interrupted, resumed
def check_folder_resumes(argv, out, *, stop_after=1):
    """A folder command (``mcdo --images``, ``refine-batch``, ``lesions score --images``) interrupted after
    ``stop_after`` cases and rerun: checks that the rerun computes only the other cases and leaves the finished
    ones untouched, and returns its ``summary.json``. ``argv``: the command without ``--out``."""
    import json

    import ugcn.parallel.resume as resume
    from ugcn.cli import main

    real, written = resume.write_case, []

    def write_case(case_dir, *args, **kwargs):
        if stop_after is not None and len(written) == stop_after:
            raise KeyboardInterrupt("simulated interruption")
        written.append(case_dir.name)
        return real(case_dir, *args, **kwargs)

    resume.write_case = write_case
    try:
        assert main(argv + ["--out", str(out)]) == 130  # Ctrl-C's code; the finished case stays
        finished = sorted(p.name for p in out.iterdir() if (p / "report.json").is_file())
        assert finished == written and not (out / "summary.json").exists()
        stamps = {n: (out / n / "report.json").stat().st_mtime_ns for n in finished}
        stop_after, written[:] = None, []
        assert main(argv + ["--out", str(out)]) == 0
    finally:
        resume.write_case = real
    assert finished and not set(finished) & set(written)  # the rerun skips the finished cases
    assert all((out / n / "report.json").stat().st_mtime_ns == t for n, t in stamps.items())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pending"] == [] and sorted(summary["volumes"]) == sorted(finished + written)
    return summary


@pytest.fixture(scope="session")
def folder_resumes():
    """:func:`check_folder_resumes`."""
    return check_folder_resumes


# ---------------------------------------------------------------- the benchmark scripts (not a package)
def import_benchmark(name):
    """``benchmarks/<name>.py`` imported as a module (``benchmarks/`` on ``sys.path`` for its own imports)."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_benchmark():
    """:func:`import_benchmark`."""
    return import_benchmark
