"""Method L: lesion-wise uncertainty. Connected components and MetaSeg targets, a GCNN over one graph per
lesion (graphs: :mod:`ugcn.graph.lesion_graph`), mean/logsum/size/MetaSeg baselines, fitting and scoring
them on lesion data. The k-fold experiment that trains U-Nets is :mod:`ugcn.experiments.lesion_protocol`."""
from ugcn.lesion.baselines import (
    MetaSeg,
    baseline_method_names,
    fit_metaseg,
    lesion_statistics,
    metaseg_features,
    metaseg_scores,
)
from ugcn.lesion.components import FP_EPSILON, LesionTable, adjusted_iou, label_lesions, lesion_table
from ugcn.lesion.gcnn import (
    GCNN,
    GCNNConfig,
    LesionModel,
    fit_gcnn,
    load_lesion_model,
    save_lesion_model,
    score_lesions,
)
from ugcn.lesion.protocol import (
    CaseLesions,
    LesionMethods,
    LesionSet,
    case_lesions,
    evaluate_lesion_scores,
    fit_lesion_methods,
    merge_cases,
    method_names,
    score_lesion_methods,
)

__all__ = [
    "CaseLesions",
    "LesionMethods",
    "LesionSet",
    "case_lesions",
    "evaluate_lesion_scores",
    "fit_lesion_methods",
    "merge_cases",
    "method_names",
    "score_lesion_methods",
    "FP_EPSILON",
    "GCNN",
    "GCNNConfig",
    "LesionModel",
    "LesionTable",
    "MetaSeg",
    "adjusted_iou",
    "baseline_method_names",
    "fit_gcnn",
    "fit_metaseg",
    "label_lesions",
    "lesion_statistics",
    "lesion_table",
    "load_lesion_model",
    "metaseg_features",
    "metaseg_scores",
    "save_lesion_model",
    "score_lesions",
]
