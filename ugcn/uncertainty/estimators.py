"""The registry of voxel-wise uncertainty estimators: built-ins and users' own, found by name.

An estimator is a named pure function that maps Monte Carlo sample statistics (:class:`SampleStats`) —
or, when it says so, the samples themselves — to a voxel map ``f32[...]``. Consumers (method R's
threshold, method L's node features and baselines, the ``mcdo`` command) take estimator NAMES and look
them up here, so a new estimator is usable everywhere once registered::

    from ugcn.uncertainty import register_estimator

    @register_estimator("top2_margin", value_range=(0.0, 1.0), description="1 - (top1 - top2) of E")
    def top2_margin(stats):
        top2 = jax.lax.top_k(stats.sum_p / stats.count, 2)[0]
        return 1.0 - (top2[..., 0] - top2[..., 1])

Without registering, ``get_estimator("my_package.my_module:margin")`` imports a function (or an
:class:`Estimator` object) by its import path; the CLI accepts the same spec in ``--estimators``. A
function whose first parameter is named ``samples`` (or a spec ending in ``:samples``) receives the samples
``f32[T, ..., C]`` instead of the statistics, e.g. ``def margin(samples): return 1 - abs(2 * samples.mean(0)
- 1)``. A map with a trailing class axis ``[..., C]`` is reduced like ``variance``: the foreground class for
``C = 2``, the class mean for ``C > 2``. An estimator that raises, or returns something that is not such a
map, gives one ``ValueError`` naming the estimator, what it received and what it returned.

Built-ins (see :mod:`ugcn.uncertainty.measures`): ``entropy`` (bits, normalised by ``log2 C``, so max 1 for
any ``C``, the scale of method R's ``τ = 0.8``), ``entropy_nats``, ``variance``, ``pcs`` (a confidence:
``higher_is_uncertain=False``), ``one_minus_pcs``, ``mutual_information`` and ``expected_entropy`` (bits,
normalised like ``entropy``, so that ``entropy = mutual_information + expected_entropy``), ``predictive_std``
(``sqrt(variance)``, same foreground / class-mean convention), ``margin`` (``1 - (top1 - top2)`` of ``E``) and
``variation_ratio`` (``1 -`` the modal hard label's share of the ``T`` samples; ``needs="samples"``). Every
built-in is exact at ``p = 0`` and ``p = 1`` (no NaN).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import math
import re
from typing import Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from ugcn.uncertainty import measures
from ugcn.uncertainty.stats import SampleStats

NEEDS = ("stats", "samples")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclasses.dataclass(frozen=True)
class Estimator:
    """A named voxel-wise uncertainty (or confidence) estimator.

    Attributes:
      name: registry name (or the ``module:function`` spec it was imported from).
      fn: ``needs="stats"``: ``fn(stats: SampleStats) -> f32[...]``; ``needs="samples"``:
        ``fn(samples: f32[T, ..., C]) -> f32[...]``. Pure ``jnp``, traced under ``jit``.
      needs: ``"stats"`` (streaming sums suffice) or ``"samples"`` (all ``T`` samples must be kept).
      value_range: ``(lo, hi)`` of the map when known (``None``: unbounded/unknown).
      higher_is_uncertain: ``False`` for confidences such as PCS.
      description: one line for ``--help`` and listings.
    """

    name: str
    fn: Callable
    needs: str = "stats"
    value_range: Optional[tuple[float, float]] = None
    higher_is_uncertain: bool = True
    description: str = ""

    def __post_init__(self):
        if self.needs not in NEEDS:
            raise ValueError(f"estimator {self.name!r}: needs must be one of {NEEDS}, got {self.needs!r}")
        if not callable(self.fn):
            raise ValueError(f"estimator {self.name!r}: fn must be callable, got {type(self.fn).__name__}")
        if self.value_range is not None:
            lo, hi = (float(v) for v in self.value_range)
            if not lo < hi:
                raise ValueError(f"estimator {self.name!r}: value_range must be (lo, hi) with lo < hi")
            object.__setattr__(self, "value_range", (lo, hi))

    def __call__(self, stats: SampleStats, samples: Optional[jnp.ndarray] = None) -> jnp.ndarray:
        """The map ``f32[...]`` (un-jitted; use :func:`estimator_maps` for several at once)."""
        if self.needs == "samples":
            if samples is None:
                raise ValueError(
                    f"estimator {self.name!r} needs the samples: sample with keep_samples=True "
                    "(CLI: --save-samples) or pass samples="
                )
            return self.fn(samples)
        return self.fn(stats)

    def as_uncertainty(self, values: jnp.ndarray) -> jnp.ndarray:
        """Orient a map of this estimator so that higher means more uncertain.

        Confidences become ``hi - values`` when ``value_range`` is known (PCS -> ``1 - PCS``), ``-values``
        otherwise; uncertainties are returned unchanged.
        """
        if self.higher_is_uncertain:
            return values
        if self.value_range is not None:
            return self.value_range[1] - values
        return -values


_REGISTRY: dict[str, Estimator] = {}


def register_estimator(
    name: str,
    fn: Optional[Callable] = None,
    *,
    needs: str = "stats",
    value_range: Optional[tuple[float, float]] = None,
    higher_is_uncertain: bool = True,
    description: str = "",
    overwrite: bool = False,
):
    """Add an estimator to the registry; usable as a decorator or as a plain call.

    ``@register_estimator("name", ...)`` registers the decorated function and returns it unchanged;
    ``register_estimator("name", fn=f, ...)`` registers ``f`` and returns the :class:`Estimator`.

    Args:
      name: letters, digits, ``_ . -`` (no ``:`` or ``,``, which separate import specs and CLI lists).
      fn: the function (see :class:`Estimator`), or ``None`` for decorator use.
      needs, value_range, higher_is_uncertain, description: see :class:`Estimator`. ``description``
        defaults to the first line of ``fn``'s docstring.
      overwrite: replace an existing estimator of the same name (otherwise a ``ValueError``).
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"estimator name {name!r} is not valid: use letters, digits, '_', '.', '-' and start with a letter"
        )

    def _register(f: Callable) -> Estimator:
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"an estimator named {name!r} is registered already (pass overwrite=True to replace it)")
        doc = description or ((f.__doc__ or "").strip().splitlines() or [""])[0]
        est = Estimator(name, f, needs, value_range, higher_is_uncertain, doc)
        _REGISTRY[name] = est
        return est

    if fn is not None:
        return _register(fn)

    def decorator(f: Callable) -> Callable:
        _register(f)
        return f

    return decorator


def unregister_estimator(name: str) -> None:
    """Remove a registered estimator (``ValueError`` when unknown)."""
    if name not in _REGISTRY:
        raise ValueError(f"no estimator named {name!r} is registered")
    del _REGISTRY[name]


def list_estimators() -> list[str]:
    """Names of the registered estimators, sorted."""
    return sorted(_REGISTRY)


def registered_estimators() -> Mapping[str, Estimator]:
    """A read-only view of the registry, name -> :class:`Estimator`."""
    return dict(_REGISTRY)


def _first_parameter(fn: Callable) -> Optional[str]:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return None
    return params[0].name if params else None


def _import_spec(spec: str) -> Estimator:
    module_name, _, attr = spec.partition(":")
    attr, _, needs = attr.partition(":")
    if not module_name or not attr:
        raise ValueError(f"estimator spec {spec!r} must look like 'package.module:function' "
                         "(optionally ':samples' or ':stats' after it)")
    if needs and needs not in NEEDS:
        raise ValueError(f"estimator spec {spec!r}: the part after the function must be one of {NEEDS}, "
                         f"got {needs!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"estimator spec {spec!r}: cannot import module {module_name!r} ({err})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"estimator spec {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, Estimator):
        return obj
    if not callable(obj):
        raise ValueError(f"estimator spec {spec!r}: {attr!r} is neither a function nor an Estimator")
    doc = ((obj.__doc__ or "").strip().splitlines() or [""])[0]
    if not needs:  # a function written for the samples says so by its parameter's name
        needs = "samples" if _first_parameter(obj) == "samples" else "stats"
    return Estimator(spec, obj, needs=needs, description=doc)


def get_estimator(name: Union[str, Estimator]) -> Estimator:
    """Look up an estimator by registered name or by ``"package.module:function"`` import spec.

    An imported function is taken as ``fn(stats) -> map`` (an uncertainty, range unknown), or as
    ``fn(samples) -> map`` when its first parameter is named ``samples`` or the spec ends in ``:samples``;
    to declare other properties, export an :class:`Estimator` object instead. An :class:`Estimator` passes
    through.

    Raises:
      ValueError: unknown name (the message lists the registered ones) or an import spec that fails.
    """
    if isinstance(name, Estimator):
        return name
    if not isinstance(name, str):
        raise ValueError(f"an estimator is named by a string, got {type(name).__name__}")
    name = name.strip()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        return _import_spec(name)
    raise ValueError(
        f"unknown estimator {name!r}; registered: {', '.join(list_estimators())} "
        "(or give 'package.module:function')"
    )


def parse_estimator_names(text: Union[str, Sequence[Union[str, Estimator]]]) -> list[Estimator]:
    """Estimators from a comma-separated string (CLI) or a sequence of names/specs/objects, de-duplicated."""
    items = [t for t in text.split(",")] if isinstance(text, str) else list(text)
    out: list[Estimator] = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        est = get_estimator(item)
        if est.name not in {e.name for e in out}:
            out.append(est)
    if not out:
        raise ValueError("no estimator given; registered: " + ", ".join(list_estimators()))
    return out


def _describe(value) -> str:
    """``f32[16, 16, 8, 2]``-style description of an array (or of a pytree's arrays), for messages."""
    if isinstance(value, SampleStats):
        return "SampleStats(" + ", ".join(f"{k}={_describe(v)}" for k, v in value._asdict().items()) + ")"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        kind = {"f": "f", "i": "i", "u": "u", "b": "bool"}.get(jnp.dtype(value.dtype).kind, str(value.dtype))
        bits = "" if kind == "bool" else str(jnp.dtype(value.dtype).itemsize * 8)
        return f"{kind}{bits}[{', '.join(map(str, value.shape))}]"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {len(value)} (" + ", ".join(_describe(v) for v in value[:4]) + ")"
    return type(value).__name__


def _evaluate(est: Estimator, stats: SampleStats, samples) -> jnp.ndarray:
    """``est``'s map ``f32[...]`` (voxel shape of ``stats``), or one ``ValueError`` saying what went wrong."""
    spatial, num_classes = tuple(stats.sum_p.shape[:-1]), stats.sum_p.shape[-1]
    given = f"samples {_describe(samples)}" if est.needs == "samples" else _describe(stats)
    try:
        returned = est(stats, samples)
    except ValueError as err:
        if "needs the samples" in str(err):
            raise
        raise ValueError(f"estimator {est.name!r} failed on {given}: {type(err).__name__}: "
                         f"{_first_line(err)}") from None
    except Exception as err:  # a plug-in may raise anything; the user needs its name and its inputs
        hint = " (it is traced under jax.jit: use jax.numpy, not numpy)" if "Tracer" in type(err).__name__ else ""
        raise ValueError(f"estimator {est.name!r} failed on {given}: {type(err).__name__}: "
                         f"{_first_line(err)}{hint}") from None
    try:
        value = jnp.asarray(returned, jnp.float32)
    except (TypeError, ValueError):
        value = None
    if value is not None and value.shape == spatial + (num_classes,):  # a per-class map: reduce like variance
        value = value[..., 1] if num_classes == 2 else value.mean(-1)
    if value is None or value.shape != spatial:
        raise ValueError(f"estimator {est.name!r} received {given} and returned {_describe(returned)}; expected a "
                         f"voxel map f32[{', '.join(map(str, spatial))}] (or one per class, "
                         f"[{', '.join(map(str, spatial + (num_classes,)))}])")
    return value


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


@functools.lru_cache(maxsize=64)
def _compiled_maps(estimators: tuple[Estimator, ...]) -> Callable:
    def compute(stats: SampleStats, samples):
        return {est.name: _evaluate(est, stats, samples) for est in estimators}

    return jax.jit(compute)


def estimator_maps(
    names: Union[str, Sequence[Union[str, Estimator]]],
    stats: SampleStats,
    samples: Optional[jnp.ndarray] = None,
) -> dict[str, jnp.ndarray]:
    """Compute several estimators' maps in ONE jitted call.

    Args:
      names: registered names, import specs or :class:`Estimator` objects (or a comma-separated string).
      stats: :class:`SampleStats` with sums ``f32[..., C]`` and ``count >= 1``.
      samples: ``f32[T, ..., C]``, required only by estimators with ``needs="samples"``.

    Returns:
      ``{name: f32[...]}`` in the order requested.

    Raises:
      ValueError: unknown estimator, samples missing for a ``"samples"`` estimator, zero samples, a map of
        the wrong shape.
    """
    estimators = tuple(parse_estimator_names(names))
    needing = [e.name for e in estimators if e.needs == "samples"]
    if needing and samples is None:
        raise ValueError(
            f"estimator(s) {', '.join(needing)} need the samples: sample with keep_samples=True "
            "(CLI: --save-samples) or pass samples="
        )
    if not isinstance(stats.count, jax.core.Tracer) and float(stats.count) < 1:
        raise ValueError("the statistics hold no sample (count = 0)")
    if samples is not None:
        samples = jnp.asarray(samples)
        if samples.shape[1:] != stats.sum_p.shape:
            raise ValueError(f"samples shape {samples.shape} does not match statistics shape {stats.sum_p.shape}")
    if not needing:
        samples = None  # don't transfer or trace what nobody reads
    maps = _compiled_maps(estimators)(stats, samples)
    return {est.name: maps[est.name] for est in estimators}  # jit returns dicts sorted by key


# --- built-ins --------------------------------------------------------------------------------------

register_estimator(
    "entropy",
    fn=functools.partial(measures.entropy, base=2.0, normalise=True),
    value_range=(0.0, 1.0),
    description="predictive entropy H(E) in bits / log2(C) (binary: bits, max 1; method R's τ scale)",
)
register_estimator(
    "entropy_nats",
    fn=functools.partial(measures.entropy, base=math.e, normalise=False),
    description="predictive entropy H(E) in nats, not normalised (max ln C)",
)
register_estimator(
    "variance",
    fn=measures.variance,
    value_range=(0.0, 0.25),
    description="variance over samples of the foreground probability (mean over classes for C > 2)",
)
register_estimator(
    "pcs",
    fn=measures.pcs,
    value_range=(0.0, 1.0),
    higher_is_uncertain=False,
    description="predicted confidence score max_c E_c (a confidence: high = certain)",
)
register_estimator(
    "one_minus_pcs",
    fn=measures.one_minus_pcs,
    value_range=(0.0, 1.0),
    description="1 - max_c E_c (PCS as an uncertainty)",
)
register_estimator(
    "mutual_information",
    fn=functools.partial(measures.mutual_information, base=2.0, normalise=True),
    value_range=(0.0, 1.0),
    description="mutual information H(E) - mean_t H(p_t) (epistemic), bits / log2(C)",
)
register_estimator(
    "expected_entropy",
    fn=functools.partial(measures.expected_entropy, base=2.0, normalise=True),
    value_range=(0.0, 1.0),
    description="expected entropy mean_t H(p_t) (aleatoric), bits / log2(C)",
)

register_estimator(
    "predictive_std",
    fn=measures.predictive_std,
    value_range=(0.0, 0.5),
    description="standard deviation over samples, sqrt(variance) (foreground; class-mean variance for C > 2)",
)
register_estimator(
    "margin",
    fn=measures.margin,
    value_range=(0.0, 1.0),
    description="1 - (top1 - top2) of the expected class probabilities E",
)
register_estimator(
    "variation_ratio",
    fn=measures.variation_ratio,
    needs="samples",
    value_range=(0.0, 1.0),
    description="1 - (count of the modal hard label)/T over the samples (max 1 - 1/C; needs the samples)",
)

BUILTIN_ESTIMATORS = tuple(list_estimators())
DEFAULT_ESTIMATORS = ("entropy", "variance", "pcs")

__all__ = [
    "Estimator",
    "register_estimator",
    "unregister_estimator",
    "get_estimator",
    "list_estimators",
    "registered_estimators",
    "parse_estimator_names",
    "estimator_maps",
    "BUILTIN_ESTIMATORS",
    "DEFAULT_ESTIMATORS",
]
