"""Graph variants of method R and the per-volume choice among them by the self-check's validation score.

The method's graph links every node to 16 random partners with a diversity term in the weights. Measured on
CT phantoms where the CNN is uncertain over most of the organ, those random edges are 73 % of all edges and
wash the features out in one propagation, and the diversity term adds weight between *dissimilar* nodes.
Which graph suits a volume depends on the CNN and the volume, so the default tries two and keeps the one
whose fit best reproduces ``Ŷ`` on the held-out labelled nodes (:mod:`ugcn.refine.selfcheck`):

  - ``"configured"``: the graph the :class:`~ugcn.refine.pipeline.RefineConfig` describes (by default
    6-neighbour edges plus edges to the 8 nearest nodes in feature space, no diversity term; with
    ``RefineConfig.preset("reference")`` the method's 16 random edges and λ = 0.5);
  - ``"local"`` (:data:`DEFAULT_VARIANTS`): 6-neighbour edges only, no diversity term.

:data:`KNN` (the default's own graph) is a ready-made variant for configurations whose own graph is another
one. On simulated CNN outputs of the CT phantoms and on the synthetic sphere, the method's random graph
scored below both on the held-out nodes on every volume, so the default does not spend a fit on it.

Every candidate of one volume shares its nodes, features, labels and train/validation split (one seed), so
their validation scores are comparable; all candidate fits run in one batched compiled program
(:func:`~ugcn.refine.fit.fit_batch`).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from ugcn.refine.selfcheck import FitScores


@dataclasses.dataclass(frozen=True)
class Variant:
    """A candidate graph: overrides of :func:`~ugcn.graph.voxel_graph.build_voxel_graph` settings.

    Attributes:
      name: how reports call it.
      k_random, lam, long_range, long_range_weight: as in ``build_voxel_graph``; ``None`` keeps the
        configuration's value.
    """

    name: str
    k_random: Optional[int] = None
    lam: Optional[float] = None
    long_range: Optional[str] = None
    long_range_weight: Optional[float] = None

    def apply(self, graph_kwargs: dict) -> dict:
        """``graph_kwargs`` with this variant's overrides."""
        out = dict(graph_kwargs)
        for field in ("k_random", "lam", "long_range", "long_range_weight"):
            value = getattr(self, field)
            if value is not None:
                out[field] = value
        return out


CONFIGURED = Variant("configured")
LOCAL = Variant("local", k_random=0, lam=0.0)
KNN = Variant("knn", k_random=8, lam=0.0, long_range="knn")
# The configured (by default k-NN) graph comes first: on exact ties of the validation score the earlier
# candidate wins, and k-NN was the better of the two on simulated CNN outputs where both reproduced Ŷ
# perfectly on the held-out nodes.
DEFAULT_VARIANTS = (LOCAL,)


def select_variant(scores: FitScores, passed: np.ndarray, names: Sequence[str]) -> tuple[Optional[int], str]:
    """The candidate to return: the passing one with the highest validation balanced accuracy (then Dice,
    then the earlier in ``names``).

    Args:
      scores: :class:`FitScores` with arrays ``[C]``.
      passed: ``bool[C]`` from :func:`~ugcn.refine.selfcheck.check_fit`.
      names: ``C`` candidate names.

    Returns:
      ``(index or None when none passed, one sentence saying why)``.
    """
    ba = np.nan_to_num(np.atleast_1d(scores.balanced_accuracy), nan=-1.0)
    dsc = np.nan_to_num(np.atleast_1d(scores.dice), nan=-1.0)
    ok = np.flatnonzero(np.asarray(passed, bool))
    if ok.size == 0:
        return None, f"no candidate passed the self-check ({', '.join(names)})"
    # lexsort: last key is primary; -index prefers the earlier candidate on exact ties.
    best = int(ok[np.lexsort((-ok, dsc[ok], ba[ok]))[-1]])
    if len(names) == 1:
        return best, "the only candidate; it passed the self-check"
    others = ", ".join(f"{names[i]} {ba[i]:.3f}" for i in range(len(names)) if i != best)
    return best, (f"highest validation balanced accuracy among the candidates that passed the self-check: "
                  f"{names[best]} {ba[best]:.3f} (others: {others})")
