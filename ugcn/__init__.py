"""ugcn: uncertainty-driven graph networks for medical image segmentation, in JAX.

Method R refines an organ segmentation with a GCN fitted per volume on its uncertain voxels; method L
scores every predicted lesion's uncertainty with a graph network. The names below are the public API;
each is also importable from its sub-package (``ugcn.refine``, ``ugcn.lesion``, ...). Sub-packages are
imported on first use, so ``import ugcn`` (and ``ugcn --help``) stays fast.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "ugcn.io": ["Volume", "load_volume", "load_mask", "save_volume", "check_same_grid"],
    "ugcn.data": ["ct_phantom", "brain_phantom", "realistic_brain_phantom", "find_cases", "load_case",
                  "write_decathlon", "kfold_splits"],
    "ugcn.segment": ["UNetConfig", "SegmentationModel", "make_volume_fn", "predict_probabilities", "predict_mask",
                     "save_model", "load_model"],
    "ugcn.segment.train": ["train_model"],
    "ugcn.uncertainty": ["SampleStats", "SampledVolume", "MCResult", "Estimator", "mc_sample", "stats_from_samples",
                         "expectation", "estimator_maps", "register_estimator", "get_estimator", "list_estimators",
                         "load_sample_maps", "tta_sample"],
    "ugcn.uncertainty.cohort": ["mc_sample_batch"],
    "ugcn.graph": ["GraphConv", "gcn_normalize", "propagate", "build_voxel_graph", "build_lesion_graphs"],
    "ugcn.refine": ["RefineConfig", "RefineInput", "RefineResult", "FitConfig", "refine_volume", "refine_batch",
                    "fit_gcn", "fit_batch", "dense_crf", "crf_available", "CRFConfig", "crf_refine", "tune_crf",
                    "SelfCheckConfig", "Variant"],
    "ugcn.lesion": ["LesionModel", "GCNNConfig", "MetaSeg", "save_lesion_model", "load_lesion_model",
                    "label_lesions", "adjusted_iou", "case_lesions", "fit_gcnn", "score_lesions",
                    "merge_cases", "fit_lesion_methods", "score_lesion_methods", "evaluate_lesion_scores"],
    "ugcn.evaluate": ["dice", "accuracy_confidence_curve", "accuracy_confidence_auc", "spearman", "bootstrap_aucs",
                      "lesion_retention_curve"],
    "ugcn.experiments.lesion_protocol": ["LesionProtocolConfig", "run_protocol"],
    "ugcn.experiments.estimator_study": ["compare_estimators", "CompareConfig", "CaseSamples"],
    "ugcn.parallel": ["device_mesh", "shard_batch", "unpad", "initialize_distributed", "process_slice"],
}
_WHERE = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = ["__version__", *_WHERE]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ugcn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
