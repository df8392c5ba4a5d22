"""ugcn.data: synthetic phantoms, dataset folder layouts and k-fold splits."""
from ugcn.data.layout import LABEL_SUFFIXES, Case, Split, find_cases, kfold_splits, load_case, write_decathlon
from ugcn.data.phantoms import (
    BRAIN_TISSUES,
    CT_HU,
    CT_TISSUES,
    FLAIR_LEVELS,
    Phantom,
    brain_phantom,
    ct_phantom,
    phantom_affine,
    realistic_brain_phantom,
    uncertain_band_case,
)

__all__ = [
    "BRAIN_TISSUES",
    "Case",
    "LABEL_SUFFIXES",
    "Split",
    "find_cases",
    "kfold_splits",
    "load_case",
    "write_decathlon",
    "CT_HU",
    "CT_TISSUES",
    "FLAIR_LEVELS",
    "Phantom",
    "brain_phantom",
    "ct_phantom",
    "phantom_affine",
    "uncertain_band_case",
    "realistic_brain_phantom",
]
