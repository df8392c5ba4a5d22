"""Write the example notebooks (``notebooks/*.ipynb``) from the cell sources below, without outputs.

Run ``python notebooks/build_notebooks.py`` after editing a cell here; the ``.ipynb`` files are generated
and committed without output cells (``tests/test_notebooks.py`` executes them and checks they carry none).
Each notebook starts with a parameter cell (tagged ``parameters``, papermill-style) holding tiny CPU sizes;
raise them to get meaningful numbers.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

REFINEMENT = [
    ("md", """# Method R step by step: uncertainty-driven GCN refinement

This notebook runs method R (Soberanis-Mukul, Navab, Albarqouni, MIDL 2020) on a synthetic CT phantom,
one step at a time, with the public `ugcn` API:

1. train a small 2D U-Net with channel-wise dropout on a few phantoms (the low-data regime);
2. the deterministic prediction Ŷ of a held-out phantom;
3. T Monte Carlo dropout passes: expectation E and binary entropy U (bits);
4. the partially labelled voxel graph (nodes, labelled/unlabelled, weighted edges);
5. the per-volume GCN fit and the refined mask, against the CNN, `E > 0.5` and a dense CRF;
6. a sweep over the uncertainty threshold τ.

The sizes below are tiny so that the notebook runs in about a minute on a laptop CPU (and in CI); raise
them (e.g. `SHAPE = (96, 96, 48)`, `N_TRAIN = 4`, `STEPS = 300`, `T = 20`) for meaningful numbers."""),
    ("params", """# Parameters: raise these for meaningful numbers.
SHAPE = (48, 48, 24)          # phantom size (X, Y, Z)
N_TRAIN = 2                   # phantoms the U-Net is trained on; the next one is the test volume
BASE_FEATURES, DEPTH = 8, 2   # U-Net width and number of down-samplings
DROPOUT = 0.1                 # channel-wise dropout (0.3 in the paper; tiny networks train better at 0.1)
STEPS = 80                    # Adam steps (batches of 8 axial slices)
LEARNING_RATE = 1e-2
WINDOW = (-160.0, 240.0)      # CT window (HU) applied before the network
T = 8                         # MC-dropout passes (20 in the paper)
TAU = 0.8                     # entropy threshold in bits
TAU_SWEEP = (0.5, 0.6, 0.7, 0.8, 0.9)
SEED = 0"""),
    ("code", """%matplotlib inline
import time

import jax
import matplotlib.pyplot as plt
import numpy as np

import ugcn

print("ugcn", ugcn.__version__, "| jax", jax.__version__, "on", jax.devices()[0].platform)"""),
    ("md", """## 1. Phantoms and a small U-Net

`ugcn.ct_phantom` draws an abdominal CT volume (HU) with a spleen-like target organ. We window the
intensities (as a CT model would) and train the 2D U-Net on axial slices."""),
    ("code", """phantoms = [ugcn.ct_phantom(SEED * 1000 + i, shape=SHAPE) for i in range(N_TRAIN + 1)]
train, test = phantoms[:N_TRAIN], phantoms[N_TRAIN]
window = lambda v: np.clip(v, *WINDOW)
image, label = window(test.image), test.label

config = ugcn.UNetConfig(dims=2, base_features=BASE_FEATURES, depth=DEPTH, dropout_rate=DROPOUT)
t0 = time.perf_counter()
model, history = ugcn.train_model([window(p.image) for p in train], [p.label for p in train], config,
                                  epochs=4, steps_per_epoch=max(1, STEPS // 4), batch_size=8,
                                  learning_rate=LEARNING_RATE, seed=SEED, progress=False)
print(f"trained {STEPS} steps in {time.perf_counter() - t0:.0f} s; loss per epoch:",
      np.round(history["loss"], 3))"""),
    ("md", """## 2. Deterministic prediction Ŷ (dropout off)"""),
    ("code", """probs = np.asarray(ugcn.predict_probabilities(model, image))   # f32[X, Y, Z, 2], class axis last
prediction = probs[..., 1] > 0.5
print(f"CNN Dice on the held-out phantom: {ugcn.dice(prediction, label):.3f}")
z = int(np.argmax(np.count_nonzero(label, axis=(0, 1))))        # the axial slice with most organ"""),
    ("md", """## 3. Monte Carlo dropout: expectation and entropy

`mc_sample` runs the T stochastic passes as one compiled program (a scan over chunks of vmapped passes)
and keeps running sums, from which every estimator follows. Entropy is the binary entropy in bits, so
τ = 0.8 is on a [0, 1] scale."""),
    ("code", """stochastic = ugcn.make_volume_fn(model, stochastic=True)
mc = ugcn.mc_sample(stochastic, image, jax.random.PRNGKey(SEED), n_samples=T)
expectation = np.asarray(ugcn.expectation(mc.stats))[..., 1]
entropy = np.asarray(ugcn.estimator_maps(["entropy"], mc.stats)["entropy"])
print(f"entropy: max {entropy.max():.2f} bits, {np.count_nonzero(entropy > TAU)} voxels above tau = {TAU}")

panels = [("image", image, "gray"), ("ground truth", label, "gray"), ("CNN Ŷ", prediction, "gray"),
          ("expectation E", expectation, "viridis"), ("entropy U (bits)", entropy, "magma"),
          (f"U > tau = {TAU}", entropy > TAU, "gray")]
fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3))
for ax, (name, vol, cmap) in zip(axes, panels):
    ax.imshow(np.asarray(vol, np.float32)[:, :, z].T, cmap=cmap, origin="lower")
    ax.set_title(name)
    ax.axis("off")
fig.suptitle(f"axial slice {z}")
plt.show()"""),
    ("md", """## 4. The voxel graph

Nodes are the ROI voxels of `dilate(U > τ) ∪ (E > 0.5)`; nodes with `U ≤ τ` carry the label Ŷ, the others
are to be inferred. Edges link each node to its face neighbours and to 16 random nodes, weighted by
intensity, position and the diversity of the expectations."""),
    ("code", """graph = ugcn.build_voxel_graph(image, prediction, expectation, entropy, tau=TAU, seed=SEED)
for key, value in graph.stats().items():
    print(f"{key:>20s}: {value}")

degree = np.bincount(graph.receivers, minlength=graph.n_nodes)
fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
axes[0].hist(degree, bins=30)
axes[0].set_title("node degree")
axes[1].hist(graph.weights, bins=50)
axes[1].set_title("edge weights")
node_map = np.zeros(image.shape, np.int8)
node_map[tuple(graph.node_coords.T)] = np.where(graph.label_mask, 1, 2)
rx, ry, rz = graph.roi                                           # the ROI box (slices)
zz = min(max(z, rz.start), rz.stop - 1)
axes[2].imshow(node_map[rx, ry, zz].T, origin="lower", cmap="viridis", vmin=0, vmax=2, interpolation="nearest")
axes[2].set_title(f"ROI, slice {zz}: labelled (teal),\\nunlabelled (yellow) nodes", fontsize=9)
axes[2].axis("off")
plt.show()"""),
    ("md", """## 5. GCN refinement and baselines

`refine_volume` builds the same graph, fits the 2-layer GCN for 200 epochs (one jitted scan) on the
labelled nodes and predicts every node. The dense CRF baseline runs when `pydensecrf2` is installed
(`pip install "ugcn[crf]"`)."""),
    ("code", """t0 = time.perf_counter()
result = ugcn.refine_volume(image, prediction, expectation, entropy, label=label, crf=True,
                            config=ugcn.RefineConfig(tau=TAU), seed=SEED, uncertainty_name="entropy")
print(f"status: {result.status}; {time.perf_counter() - t0:.1f} s (graph + fit + CRF)")
for message in result.messages:
    print("note:", message)
names = {"cnn": "CNN", "expectation_mask": "E > 0.5", "crf": "dense CRF", "refined": "GCN",
         "refined_unlabelled": "GCN (unlabelled nodes only)"}
print("\\n| method | Dice |\\n|---|---:|")
for key, name in names.items():
    if key in result.dice:
        print(f"| {name} | {result.dice[key]:.3f} |")"""),
    ("code", """panels = [("ground truth", label), ("CNN", result.cnn), ("E > 0.5", result.expectation_mask),
          ("GCN refined", result.refined)]
fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2))
for ax, (name, mask) in zip(axes, panels):
    ax.imshow(image[:, :, z].T, cmap="gray", origin="lower")
    ax.contour(np.asarray(mask)[:, :, z].T, levels=[0.5], colors="red", linewidths=1)
    ax.set_title(f"{name}" + (f" ({ugcn.dice(mask, label):.2f})" if name != "ground truth" else ""))
    ax.axis("off")
plt.show()"""),
    ("md", """## 6. Sweep over τ

A lower τ marks more voxels as uncertain: more unlabelled nodes for the GCN to infer.

At the tiny default sizes the U-Net is barely trained and uncertain over much of the organ, so many nodes
are unlabelled and the GCN has little reliable supervision: do not judge the method by these numbers. The
README's results section shows the demo at larger sizes (`make demo`)."""),
    ("code", """sweep = []
for tau in TAU_SWEEP:
    r = ugcn.refine_volume(image, prediction, expectation, entropy, label=label,
                           config=ugcn.RefineConfig(tau=float(tau)), seed=SEED)
    sweep.append((tau, r.dice["refined"] if r.dice else float("nan"), r.graph_stats.get("unlabelled", 0)))
print("| tau | GCN Dice | unlabelled nodes |\\n|---:|---:|---:|")
for tau, d, n in sweep:
    print(f"| {tau:.2f} | {d:.3f} | {n} |")

fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot([s[0] for s in sweep], [s[1] for s in sweep], "o-", label="GCN")
for key, style in (("cnn", "--"), ("expectation_mask", ":"), ("crf", "-.")):
    if key in result.dice:
        ax.axhline(result.dice[key], linestyle=style, color="gray", label=names[key])
ax.set_xlabel("tau (entropy threshold, bits)")
ax.set_ylabel("Dice")
ax.legend(fontsize=8)
plt.show()"""),
    ("md", """## 7. Ablation: which edges help?

docs/method.md's edge weight adds a diversity term `λ·div(E_i, E_j)` (λ = 0.5), which is *largest* between a
confident foreground and a confident background node, and every node gets k = 16 random long-range edges.
On the demo's phantoms (96×96×48, `make demo`) dropping either helped: mean GCN Dice 0.704 (defaults),
0.736 (λ = 0), 0.742 (k = 0), 0.750 (both), against 0.748 for the CNN. Both are settings
(`RefineConfig(lam=..., k_random=...)`, `ugcn refine --lam 0 --k-random 0`); the defaults stay the paper's."""),
    ("code", """variants = {"defaults": {}, "lam = 0": {"lam": 0.0}, "k_random = 0": {"k_random": 0},
            "lam = 0, k_random = 0": {"lam": 0.0, "k_random": 0}}
print("| edges | GCN Dice | GCN (unlabelled only) |\\n|---|---:|---:|")
for name, change in variants.items():
    r = ugcn.refine_volume(image, prediction, expectation, entropy, label=label,
                           config=ugcn.RefineConfig(tau=TAU, **change), seed=SEED)
    print(f"| {name} | {r.dice['refined']:.3f} | {r.dice['refined_unlabelled']:.3f} |")"""),
    ("md", """## Your own model

Method R needs only T probability maps: with MC samples `f32[T, X, Y, Z, C]` from any framework,
`ugcn.stats_from_samples(samples)` gives the statistics used above, and
`ugcn refine --image case.nii.gz --samples samples.nii.gz --out refined/` does the same from the shell.
`ugcn.refine_batch` refines a whole cohort in one vmapped fit."""),
]

LESIONS = [
    ("md", """# Method L: lesion-wise uncertainty on brain phantoms

This notebook runs method L (Lambert, Forbes, Doyle, Tucholka, Dojat, 2022) on synthetic FLAIR brains
with MS-like lesions, with the public `ugcn` API:

1. train a tiny 3D U-Net with channel-wise dropout;
2. T Monte Carlo dropout passes on validation and test phantoms: entropy, variance and 1 − PCS maps;
3. connected components of the prediction: the lesion table (size, adjusted IoU, TP/FP);
4. fit the GCNNs (classification and regression) and MetaSeg on the validation lesions;
5. rank the test lesions by every method's uncertainty: accuracy-confidence curves, AUC and Spearman's ρ
   against lesion size.

One split only, tiny sizes (about a minute on a laptop CPU); `ugcn lesions evaluate` runs the paper's
4-fold protocol. With a handful of test lesions the AUCs are noisy: raise the sizes for real numbers."""),
    ("params", """# Parameters: raise these for meaningful numbers.
SHAPE = (32, 32, 24)          # phantom size (each a multiple of 4, >= 24)
N_TRAIN, N_VAL, N_TEST = 4, 3, 3
BASE_FEATURES, DEPTH = 4, 2   # 3D U-Net width and down-samplings (trained on whole volumes)
DROPOUT = 0.1                 # channel-wise 3D dropout (0.2 in the paper; tiny networks train better at 0.1)
STEPS = 100                   # Adam steps, batch 1
LEARNING_RATE = 1e-2
T = 6                         # MC-dropout passes (20 in the paper)
GCNN_EPOCHS = 30
ESTIMATORS = ("entropy", "variance", "one_minus_pcs")
SEED = 0"""),
    ("code", """%matplotlib inline
import time

import jax
import matplotlib.pyplot as plt
import numpy as np

import ugcn
from ugcn.lesion import evaluate_lesion_scores, fit_lesion_methods, merge_cases, score_lesion_methods

print("ugcn", ugcn.__version__, "| jax", jax.__version__, "on", jax.devices()[0].platform)"""),
    ("md", """## 1. Brain phantoms and a tiny 3D U-Net"""),
    ("code", """phantoms = [ugcn.brain_phantom(SEED * 1000 + i, shape=SHAPE) for i in range(N_TRAIN + N_VAL + N_TEST)]
print("ground-truth lesions per phantom:", [ugcn.label_lesions(p.label)[1] for p in phantoms])
train = phantoms[:N_TRAIN]
config = ugcn.UNetConfig(dims=3, base_features=BASE_FEATURES, depth=DEPTH, dropout_rate=DROPOUT, patch_size=SHAPE)
t0 = time.perf_counter()
model, history = ugcn.train_model([p.image for p in train], [p.label for p in train], config,
                                  epochs=10, steps_per_epoch=max(1, STEPS // 10), batch_size=1,
                                  learning_rate=LEARNING_RATE, seed=SEED, progress=False)
print(f"trained {STEPS} steps in {time.perf_counter() - t0:.0f} s; loss per epoch:", np.round(history["loss"], 3))"""),
    ("md", """## 2. MC dropout and the lesions of every validation and test phantom

The predicted mask is the expectation's most probable class. `case_lesions` finds the 26-connected
components, their adjusted IoU against the ground truth (FP when below 0.1), one graph per lesion (its
voxels dilated by one, node features = intensity, label, entropy, variance, 1 − PCS) and the baseline
aggregations."""),
    ("code", """stochastic = ugcn.make_volume_fn(model, stochastic=True)
cases = []
for i, p in enumerate(phantoms[N_TRAIN:]):
    mc = ugcn.mc_sample(stochastic, p.image, jax.random.PRNGKey(SEED + 100 + i), n_samples=T)
    maps = {k: np.asarray(v) for k, v in ugcn.estimator_maps(list(ESTIMATORS), mc.stats).items()}
    predicted = (np.asarray(ugcn.expectation(mc.stats))[..., 1] > 0.5).astype(np.uint8)
    role = "val" if i < N_VAL else "test"
    cases.append(ugcn.case_lesions(f"{role}_{i}", p.image, predicted, maps, p.label, affine=p.affine,
                                   estimators=ESTIMATORS))
for c in cases:
    print(f"{c.name}: Dice {c.dice:.3f}, {c.table.n} predicted lesions, {int(c.table.is_fp.sum())} FP")"""),
    ("code", """val, test = merge_cases(cases[:N_VAL]), merge_cases(cases[N_VAL:])
print("test lesions (the lesion table):")
print("| case | lesion | voxels | IoU_adj | FP | mean entropy |\\n|---|---:|---:|---:|:---:|---:|")
for k in range(test.n):
    print(f"| {test.case[k]} | {test.lesion[k]} | {int(test.stats['voxels'][k])} | {test.iou_adj[k]:.2f} | "
          f"{'yes' if test.is_fp[k] else ''} | {test.stats['entropy_mean'][k]:.3f} |")

c = cases[N_VAL]
p = phantoms[N_TRAIN + N_VAL]
z = int(np.argmax(np.count_nonzero(c.table.labels, axis=(0, 1))))
fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
axes[0].imshow(p.image[:, :, z].T, cmap="gray", origin="lower")
axes[0].set_title("FLAIR phantom")
axes[1].imshow(p.label[:, :, z].T, cmap="gray", origin="lower")
axes[1].set_title("ground truth")
axes[2].imshow(c.table.labels[:, :, z].T, cmap="tab20", origin="lower", interpolation="nearest")
axes[2].set_title(f"predicted lesions ({c.name})")
for ax in axes:
    ax.axis("off")
plt.show()"""),
    ("md", """## 3. Learned methods on validation lesions, every method on test lesions

GCNN-classif scores P(FP); GCNN-reg predicts IoU_adj (uncertainty = 1 − prediction); MetaSeg fits a
logistic and a linear regression on the mean uncertainties and the size; the other baselines aggregate
voxel uncertainties (mean, log-sum) or use 1/size."""),
    ("code", """t0 = time.perf_counter()
methods = fit_lesion_methods(val, estimators=ESTIMATORS, gcnn_epochs=GCNN_EPOCHS, seed=SEED)
scores = score_lesion_methods(methods, test)
metrics = evaluate_lesion_scores(scores, test.is_fp, test.stats["voxels"])
print(f"fitted on {val.n} validation lesions, scored {test.n} test lesions "
      f"({int(test.is_fp.sum())} FP) in {time.perf_counter() - t0:.0f} s")
print("| method | AUC (%) | Spearman ρ vs size |\\n|---|---:|---:|")
for name, m in metrics.items():
    print(f"| {name} | {100 * m['auc']:.1f} | {m['spearman']:.2f} |")"""),
    ("md", """## 4. Accuracy-confidence curves

Remove the most uncertain lesions first: a good ranking removes the FP lesions (x) before the TP lesions
(y), so its curve hugs the top-left corner and its area is close to 1."""),
    ("code", """fig, ax = plt.subplots(figsize=(6, 5))
for name, m in metrics.items():
    curve = m["curve"]
    if curve is not None:
        ax.plot(curve.fp, curve.tp, label=f"{name} [{100 * curve.auc:.1f}]", linewidth=1.3)
ax.plot([0, 1], [0, 1], ":", color="0.7")
ax.set_xlabel("FP lesions remaining (fraction)")
ax.set_ylabel("TP lesions remaining (fraction)")
ax.set_title("accuracy-confidence curves (AUC %)")
ax.legend(fontsize=7, loc="lower right")
plt.show()"""),
    ("md", """## Your own model

`ugcn.case_lesions` takes any predicted mask and any named voxel-uncertainty maps: export the MC samples of
your network, compute the maps with `ugcn.stats_from_samples` and `ugcn.estimator_maps`, and the rest of
this notebook applies unchanged."""),
]


def build(cells: list) -> nbformat.NotebookNode:
    """A notebook of ``(kind, source)`` cells (``md``, ``code``, ``params`` = code tagged ``parameters``)."""
    nb = new_notebook()
    for i, (kind, source) in enumerate(cells):
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        cell.id = f"cell-{i:02d}"  # stable ids: rebuilding an unchanged notebook changes nothing
        if kind == "params":
            cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


NOTEBOOKS = {"01_refinement.ipynb": REFINEMENT, "02_lesion_uncertainty.ipynb": LESIONS}


def main() -> int:
    for name, cells in NOTEBOOKS.items():
        nb = build(cells)
        nbformat.validate(nb)
        path = HERE / name
        path.write_text(nbformat.writes(nb) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
