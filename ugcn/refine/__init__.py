"""Method R: uncertainty-driven GCN refinement of an organ segmentation, per volume (no CNN retraining)."""
from ugcn.refine.crf import (
    REFERENCE_CRF,
    CRFCase,
    CRFConfig,
    CRFTuning,
    CRFUnavailableError,
    crf_available,
    crf_refine,
    dense_crf,
    tune_crf,
)
from ugcn.refine.fit import (
    FitConfig,
    FitResult,
    PaddedGraph,
    bucket_size,
    fit_batch,
    fit_gcn,
    pad_graph,
    resolve_strategy,
    stack_graphs,
)
from ugcn.refine.pipeline import PRESETS, RefineConfig, RefineInput, RefineResult, refine_batch, refine_volume
from ugcn.refine.selfcheck import FitScores, SelfCheckConfig, check_fit, validation_scores
from ugcn.refine.variants import DEFAULT_VARIANTS, Variant, select_variant

__all__ = [
    "REFERENCE_CRF", "CRFCase", "CRFConfig", "CRFTuning", "CRFUnavailableError", "crf_available", "crf_refine",
    "dense_crf", "tune_crf",
    "FitConfig", "FitResult", "PaddedGraph", "bucket_size", "fit_batch", "fit_gcn", "pad_graph", "resolve_strategy",
    "stack_graphs",
    "PRESETS", "RefineConfig", "RefineInput", "RefineResult", "refine_batch", "refine_volume",
    "FitScores", "SelfCheckConfig", "check_fit", "validation_scores",
    "DEFAULT_VARIANTS", "Variant", "select_variant",
]
