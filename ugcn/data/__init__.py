"""ugcn.data: synthetic phantoms, dataset folder layouts and k-fold splits."""
from ugcn.data.phantoms import (
    BRAIN_TISSUES,
    CT_HU,
    CT_TISSUES,
    FLAIR_LEVELS,
    Phantom,
    brain_phantom,
    ct_phantom,
    phantom_affine,
)

__all__ = [
    "BRAIN_TISSUES",
    "CT_HU",
    "CT_TISSUES",
    "FLAIR_LEVELS",
    "Phantom",
    "brain_phantom",
    "ct_phantom",
    "phantom_affine",
]
