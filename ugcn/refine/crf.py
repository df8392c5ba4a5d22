"""3D fully connected CRF baseline of method R (docs/method.md R13), with pydensecrf (the ``crf`` extra).

As the reference: unary ``-log([1 - Ŷ, Ŷ] + 1e-15)`` on the ROI, a Gaussian pairwise term (compat 3)
whose spatial scales are the ROI shape itself (the reference passes the ROI shape as ``sdims``, i.e. an
almost position-independent smoothness prior), a bilateral term with spatial scales (10, 10, 10) and
intensity scale 1 on the raw image values (compat 10), and 10 mean-field iterations.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

INSTALL_HINT = 'the CRF baseline needs pydensecrf: pip install "ugcn[crf]"'


class CRFUnavailableError(ImportError):
    """pydensecrf cannot be imported; the message says how to install it."""


def _densecrf():
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import create_pairwise_bilateral, create_pairwise_gaussian
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise CRFUnavailableError(f"{INSTALL_HINT} ({err})") from None
    return dcrf, create_pairwise_gaussian, create_pairwise_bilateral


def crf_available() -> bool:
    """True when pydensecrf imports."""
    try:
        _densecrf()
    except CRFUnavailableError:
        return False
    return True


def dense_crf(
    image: np.ndarray,
    probability: np.ndarray,
    *,
    gaussian_sdims: Optional[Sequence[float]] = None,
    gaussian_compat: float = 3.0,
    bilateral_sdims: Sequence[float] = (10.0, 10.0, 10.0),
    bilateral_schan: Sequence[float] = (1.0,),
    bilateral_compat: float = 10.0,
    iterations: int = 10,
) -> np.ndarray:
    """Binary 3D dense-CRF MAP labelling of a (ROI) volume.

    Args:
      image: ``f32[x, y, z]`` or ``f32[x, y, z, M]`` intensities (raw, as the reference).
      probability: ``f32[x, y, z]`` foreground probability for the unary term (method R passes ``Ŷ``).
      gaussian_sdims: spatial scales of the Gaussian kernel (default: the volume's shape, as the reference).
      gaussian_compat, bilateral_compat: Potts compatibilities.
      bilateral_sdims, bilateral_schan: spatial and per-channel intensity scales of the bilateral kernel.
      iterations: mean-field iterations.

    Returns:
      ``u8[x, y, z]`` labels (argmax of the CRF marginals).

    Raises:
      CRFUnavailableError: pydensecrf is not installed.
      ValueError: shapes differ, or NaN values.
    """
    dcrf, create_pairwise_gaussian, create_pairwise_bilateral = _densecrf()
    image = np.asarray(image, np.float32)
    prob = np.asarray(probability, np.float32)
    shape = prob.shape
    if prob.ndim != 3 or image.shape[:3] != shape:
        raise ValueError(f"dense_crf: image {image.shape} and probability {prob.shape} must share [x, y, z]")
    if not (np.all(np.isfinite(image)) and np.all(np.isfinite(prob))):
        raise ValueError("dense_crf: NaN or infinite values")
    n = int(prob.size)
    unary = -np.log(np.stack([1.0 - prob, prob]).reshape(2, n) + 1e-15)
    crf = dcrf.DenseCRF(n, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, np.float32))
    sdims = tuple(shape) if gaussian_sdims is None else tuple(gaussian_sdims)
    crf.addPairwiseEnergy(
        np.ascontiguousarray(create_pairwise_gaussian(sdims, shape), np.float32),
        compat=float(gaussian_compat), kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_SYMMETRIC,
    )
    chdim = -1 if image.ndim == 3 else 3
    schan = tuple(bilateral_schan)
    if image.ndim == 4 and len(schan) == 1:
        schan = schan * image.shape[3]
    bilateral = create_pairwise_bilateral(sdims=tuple(bilateral_sdims), schan=schan, img=image, chdim=chdim)
    crf.addPairwiseEnergy(
        np.ascontiguousarray(bilateral, np.float32),
        compat=float(bilateral_compat), kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_SYMMETRIC,
    )
    marginals = np.asarray(crf.inference(int(iterations)))
    return np.argmax(marginals, axis=0).reshape(shape).astype(np.uint8)
