"""Per-volume intensity normalisation, recorded with a model so that inference matches training.

Optional clipping to a window (a CT window such as ``(-160, 240)`` HU for abdominal organs), then a z-score
per modality over all voxels of the volume: ``(v - mean) / max(std, eps)``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax.numpy as jnp

EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Intensity normalisation applied to every volume before the network.

    Attributes:
      clip: ``(low, high)`` window applied before the z-score (``None``: no clipping).
    """

    clip: Optional[tuple[float, float]] = None

    def __post_init__(self) -> None:
        if self.clip is not None:
            low, high = (float(v) for v in self.clip)
            if not low < high:
                raise ValueError(f"clip window must satisfy low < high, got {self.clip}")
            object.__setattr__(self, "clip", (low, high))

    def __call__(self, image: jnp.ndarray) -> jnp.ndarray:
        """Normalise ``image: f32[X, Y, Z, M]`` per modality; returns ``f32[X, Y, Z, M]`` (jit-able)."""
        x = jnp.asarray(image, jnp.float32)
        if self.clip is not None:
            x = jnp.clip(x, self.clip[0], self.clip[1])
        mean = jnp.mean(x, axis=(0, 1, 2), keepdims=True)
        std = jnp.std(x, axis=(0, 1, 2), keepdims=True)
        return (x - mean) / jnp.maximum(std, EPS)

    def to_dict(self) -> dict[str, Any]:
        return {"method": "zscore", "clip": None if self.clip is None else list(self.clip)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        if data.get("method", "zscore") != "zscore":
            raise ValueError(f"unknown normalisation method {data.get('method')!r} (expected 'zscore')")
        clip = data.get("clip")
        return cls(clip=None if clip is None else tuple(clip))
