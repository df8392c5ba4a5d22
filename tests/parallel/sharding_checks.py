"""Multi-device checks for tests/parallel/test_multi_device.py, run in ONE subprocess with 4 forced host devices.

Usage: ``XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu python tests/parallel/sharding_checks.py
OUT.json WORKDIR``. Computes sharded and single-device results side by side and writes their differences
(and a few facts about the shards) to ``OUT.json``; the assertions live in tests/parallel/test_multi_device.py.
"""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: the shared data builders of conftest.py

import jax  # noqa: E402

from ugcn.parallel import describe, device_mesh, shard_batch, unpad  # noqa: E402


def max_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def check_mesh(out: dict) -> None:
    mesh = device_mesh()
    tree = {"x": np.arange(15, dtype=np.float32).reshape(5, 3), "k": jax.random.split(jax.random.key(0), 5)}
    sharded, n = shard_batch(tree, mesh)
    shards = sharded["x"].addressable_shards
    out["mesh"] = {
        "devices": len(jax.devices()),
        "mesh_size": int(mesh.shape["batch"]),
        "padded": int(sharded["x"].shape[0]),
        "true_count": n,
        "shard_rows": sorted(int(s.data.shape[0]) for s in shards),
        "shard_devices": len({s.device for s in shards}),
        "padding_rows_copy_item0": bool(np.all(np.asarray(sharded["x"])[5:] == tree["x"][0])),
        "unpad_equal": bool(np.array_equal(np.asarray(unpad(sharded, n)["x"]), tree["x"])),
        "keys_equal": bool(np.array_equal(jax.random.key_data(unpad(sharded, n)["k"]), jax.random.key_data(tree["k"]))),
        "describe": describe(mesh, 5),
    }
    try:
        device_mesh(5)
        out["mesh"]["too_many_raises"] = False
    except ValueError:
        out["mesh"]["too_many_raises"] = True


def check_fit(out: dict) -> None:
    from conftest import build_sphere_case as sphere_case

    from ugcn.graph.voxel_graph import build_voxel_graph
    from ugcn.refine.fit import FitConfig, fit_batch, stack_graphs

    config = FitConfig(epochs=20)
    graphs = [build_voxel_graph(*sphere_case(shape=(16, 16, 12), radius=4.0 + 0.2 * i, seed=i)[:4],
                                dilation=(1, 3, 3), k_random=4) for i in range(5)]
    stacked = stack_graphs(graphs)
    keys = jax.numpy.stack([jax.random.PRNGKey(10 + i) for i in range(5)])
    single = fit_batch(stacked, keys, config)
    out["fit"] = {"n_nodes": [g.n_nodes for g in graphs]}
    for d in (4,):
        sharded = fit_batch(stacked, keys, config, devices=d)
        out["fit"][f"devices_{d}"] = {
            "shape": list(sharded.node_probs.shape),
            "probs_diff": max_diff(sharded.node_probs, single.node_probs),
            "losses_diff": max_diff(sharded.losses, single.losses),
            "params_diff": max(max_diff(a, b) for a, b in zip(jax.tree_util.tree_leaves(sharded.params),
                                                              jax.tree_util.tree_leaves(single.params))),
        }


def check_lesions(out: dict) -> None:
    from conftest import build_lesion_rule_data as _synthetic

    from ugcn.lesion.gcnn import GCNNConfig, LesionModel, _compiled, _init_graph, score_lesions

    test, _ = _synthetic(1, cells=4)  # 64 lesions: 5 batches of 14, two groups of (up to) 4 devices
    config = GCNNConfig(feature_names=tuple(test.feature_names))
    init, _, _ = _compiled(config.hidden, config.outputs, config.task)
    params, _ = init(jax.random.PRNGKey(0), _init_graph(test.num_features))  # untrained: scoring only
    model = LesionModel(config, params, test.nodes.mean(0), test.nodes.std(0) + 1e-3)
    single = score_lesions(model, test, batch_size=14)
    sharded = score_lesions(model, test, batch_size=14, devices=4)
    out["lesions"] = {"n": int(test.num_graphs), "diff": max_diff(single, sharded)}


def check_refine_batch(out: dict, work: Path) -> None:
    """A clean run at 1 device vs a run interrupted at 4 devices and resumed at 1 (the clean run's program)."""
    import nibabel as nib
    from conftest import build_sphere_case as sphere_case
    from conftest import write_sphere_case as write_case

    import ugcn.parallel.resume as resume
    from ugcn.cli import main

    src = work / "in"
    for i in range(5):
        write_case(src, f"case{i}", sphere_case(shape=(16, 16, 12), radius=4.5, seed=i))
    common = ["refine-batch", "--images", str(src), "--samples-dir", str(src / "samples"), "--labels",
              str(src / "labels"), "--gcn-epochs", "20", "--quiet"]
    assert main(common + ["--out", str(work / "clean"), "--devices", "1", "--batch-size", "2"]) == 0

    original = resume.write_case
    calls = []

    def failing_write(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        calls.append(args[0].name)
        return original(*args, **kwargs)

    resumed = work / "resumed"
    resume.write_case = failing_write
    try:
        interrupted_code = main(common + ["--out", str(resumed), "--devices", "4", "--batch-size", "4"])
    except KeyboardInterrupt:
        interrupted_code = "KeyboardInterrupt"
    finished = sorted(p.name for p in resumed.iterdir() if (p / "report.json").exists())
    stamps = {name: (resumed / name / "report.json").stat().st_mtime_ns for name in finished}
    calls.clear()

    def counting_write(*args, **kwargs):
        calls.append(args[0].name)
        return original(*args, **kwargs)

    resume.write_case = counting_write
    try:
        code = main(common + ["--out", str(resumed), "--devices", "1", "--batch-size", "2"])
    finally:
        resume.write_case = original
    same_masks, same_reports = True, True
    for i in range(5):
        a, b = work / "clean" / f"case{i}", resumed / f"case{i}"
        for f in sorted(p.name for p in a.glob("*.nii.gz")):
            same_masks &= np.array_equal(nib.load(str(a / f)).get_fdata(), nib.load(str(b / f)).get_fdata())
        ra, rb = (json.loads((d / "report.json").read_text()) for d in (a, b))
        same_reports &= all(ra[k] == rb[k] for k in ("status", "dice", "graph", "voxels", "run_settings"))
    summary = json.loads((resumed / "summary.json").read_text())
    # Other settings on a finished folder: refused, nothing recomputed.
    other = main(common + ["--out", str(resumed), "--gcn-epochs", "21"])
    out["refine_batch"] = {
        "interrupted_code": interrupted_code, "finished_before_resume": finished, "resume_code": code,
        "rewritten_on_resume": sorted(calls),
        "finished_untouched": all((resumed / n / "report.json").stat().st_mtime_ns == t for n, t in stamps.items()),
        "same_masks": bool(same_masks), "same_reports": bool(same_reports),
        "summary_volumes": sorted(summary["volumes"]), "summary_pending": summary["pending"],
        "other_settings_code": other,
    }


def check_mcdo_folder(out: dict, work: Path) -> None:
    """``ugcn mcdo --images`` at 4 devices (5 volumes: padding) vs ``ugcn mcdo --image`` of one of them."""
    import nibabel as nib

    from ugcn.cli import main
    from ugcn.segment import UNetConfig, init_model, save_model

    save_model(init_model(UNetConfig(dims=2, base_features=2, depth=1), jax.random.PRNGKey(0)), work / "model")
    (work / "images").mkdir()
    for i in range(5):
        img = np.random.default_rng(i).normal(size=(16, 16, 8)).astype(np.float32)
        nib.save(nib.Nifti1Image(img, np.diag([0.8, 0.8, 2.5, 1.0])), str(work / "images" / f"c{i}.nii.gz"))
    common = ["mcdo", "--model", str(work / "model"), "--n-samples", "3", "--chunk", "2", "--seed", "4",
              "--estimators", "entropy,variance,mutual_information", "--save-samples", "--quiet"]
    folder = main(common + ["--images", str(work / "images"), "--out", str(work / "mcdo"), "--devices", "4"])
    single = main(common + ["--image", str(work / "images" / "c4.nii.gz"), "--out", str(work / "mcdo_c4")])
    diffs = {f: max_diff(nib.load(str(work / "mcdo" / "c4" / f"{f}.nii.gz")).get_fdata(),
                         nib.load(str(work / "mcdo_c4" / f"{f}.nii.gz")).get_fdata())
             for f in ("prediction", "expectation", "entropy", "variance", "mutual_information", "samples")}
    summary = json.loads((work / "mcdo" / "summary.json").read_text())
    out["mcdo_folder"] = {"codes": [folder, single], "diffs": diffs, "volumes": sorted(summary["volumes"])}

    # refine-batch --model: MC dropout of the stacked volumes sharded too; equal to `ugcn refine` alone.
    common = ["--model", str(work / "model"), "--n-samples", "3", "--chunk", "2", "--gcn-epochs", "5", "--quiet"]
    batch = main(["refine-batch", "--images", str(work / "images"), "--out", str(work / "rb"), "--devices", "4",
                  *common])
    one = main(["refine", "--image", str(work / "images" / "c4.nii.gz"), "--out", str(work / "r4"), *common])
    reports = [json.loads((d / "report.json").read_text()) for d in (work / "rb" / "c4", work / "r4")]
    out["refine_model"] = {
        "codes": [batch, one], "status": [r["status"] for r in reports],
        "same_graph": reports[0]["graph"] == reports[1]["graph"],
        "same_masks": all(np.array_equal(nib.load(str(work / "rb" / "c4" / f)).get_fdata(),
                                         nib.load(str(work / "r4" / f)).get_fdata()) for f in reports[1]["files"]
                          if f.endswith(".nii.gz")),
    }


def check_lesions_folder(out: dict, work: Path) -> None:
    """``ugcn lesions score --images`` at 4 devices vs ``--image`` (the model and images of check_mcdo_folder)."""
    from ugcn.cli import main
    from ugcn.lesion.gcnn import GCNNConfig, LesionModel, _compiled, _init_graph, save_lesion_model

    names = ("intensity_0", "label", "entropy", "variance", "one_minus_pcs")
    config = GCNNConfig(feature_names=names)
    init, _, _ = _compiled(config.hidden, config.outputs, config.task)
    params, _ = init(jax.random.PRNGKey(1), _init_graph(len(names)))
    save_lesion_model(LesionModel(config, params, np.zeros(5, np.float32), np.ones(5, np.float32)), work / "lm")
    common = ["lesions", "score", "--model", str(work / "model"), "--lesion-model", str(work / "lm"),
              "--n-samples", "3", "--chunk", "2", "--no-progress"]
    folder = main(common + ["--images", str(work / "images"), "--out", str(work / "ls"), "--devices", "4"])
    single = main(common + ["--image", str(work / "images" / "c4.nii.gz"), "--out", str(work / "ls4")])
    csv_a, csv_b = ((d / "lesions.csv").read_text().splitlines() for d in (work / "ls" / "c4", work / "ls4"))
    values = [np.array([[float(v) for v in row.split(",")] for row in rows[1:]]) for rows in (csv_a, csv_b)]
    summary = json.loads((work / "ls" / "summary.json").read_text())
    # Per column: the sharded and the single-device MC sums differ in float rounding, which the variance
    # (a difference of near-equal sums) and the logs of tiny values amplify; the test checks the others.
    columns = {name: max_diff(values[0][:, j], values[1][:, j]) for j, name in enumerate(csv_b[0].split(","))} \
        if len(csv_a) == len(csv_b) else None
    out["lesions_folder"] = {"codes": [folder, single], "lesions": len(csv_b) - 1, "same_header": csv_a[0] == csv_b[0],
                             "column_diffs": columns, "volumes": sorted(summary["volumes"])}


def main() -> None:
    out_path, work = Path(sys.argv[1]), Path(sys.argv[2])
    assert "xla_force_host_platform_device_count=4" in os.environ.get("XLA_FLAGS", "")
    out: dict = {"seconds": {}}
    checks = (("mesh", check_mesh), ("fit", check_fit), ("lesions", check_lesions),
              ("refine_batch", lambda o: check_refine_batch(o, work)),
              ("mcdo_folder", lambda o: check_mcdo_folder(o, work)),
              ("lesions_folder", lambda o: check_lesions_folder(o, work)))
    for name, check in checks:
        t = time.perf_counter()
        check(out)
        out["seconds"][name] = round(time.perf_counter() - t, 2)
    out_path.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
