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
from ugcn.refine.pipeline import RefineConfig, RefineInput, RefineResult, refine_batch, refine_volume

__all__ = [
    "REFERENCE_CRF", "CRFCase", "CRFConfig", "CRFTuning", "CRFUnavailableError", "crf_available", "crf_refine",
    "dense_crf", "tune_crf",
    "FitConfig", "FitResult", "PaddedGraph", "bucket_size", "fit_batch", "fit_gcn", "pad_graph", "resolve_strategy",
    "stack_graphs",
    "RefineConfig", "RefineInput", "RefineResult", "refine_batch", "refine_volume",
]
