"""Monte Carlo sampling of a stochastic segmentation function, and MC samples from other frameworks.

:func:`mc_sample` runs the ``T`` stochastic passes as ONE compiled function: ``lax.scan`` over
``ceil(T / chunk)`` chunks, ``vmap`` over the chunk's PRNG keys inside, and running
:class:`SampleStats` reducing chunk after chunk, so memory grows with the chunk size, not with ``T``
(unless the samples are kept). Pass ``t`` always uses ``jax.random.split(key, T)[t]``: results do not
depend on the chunk size.

Speed against a Python loop of single jitted passes (issue 15; ``benchmarks/bench_mcdo.py``,
``benchmarks/profile_mcdo.py``): the default 2D U-Net's chunk of 4 passes runs as one batch of 4 rows per slice
with the stem shared and its masks folded into the next kernel. The scanned sampler used to be slower than the
loop (0.79x on ``--size small``, 0.65-0.71x at issue size, 128 x 128 x 64, T = 20) for two reasons found in
profiles, neither of them the scan itself: the running sums reduced a chunk with an XLA reduce over the small
pass axis, which XLA:CPU runs as a YNNPACK reduce 20-45x slower than adds (now
:func:`~ugcn.uncertainty.stats.sum_leading`; 848 ms -> 23 ms per issue-size chunk), and they summed the passes
after the crop and transpose to ``[X, Y, Z, C]`` (now in the network's slice-major layout, mapped once:
``VolumeApply.passes_raw``; 340-470 ms -> 24-43 ms per chunk). Measured after both (one process, interleaved
rounds, 2-core CPU under load 11-13): ``--size small`` shape 1.05-1.13x the loop, issue size 1.10-1.11x
(27.3 s against 30.4 s). Alternatives measured in the same run: a host loop of compiled 4-pass chunks 0.92x
(median; noisy), chunks of 2 passes 0.92x, and the 4 passes without the masks folded into the kernel (4
masked copies of the stem) 0.64x, so the default stays the scan over chunks of 4.

Concurrent streams (issue 15, item 3): one such program kept the 2-core CPU only partly busy (the 2D sampler at
issue size ran at ~135 % CPU; the Winograd transforms, pooling and running sums are elementwise loops XLA:CPU runs
on one thread). So ``mc_sample`` splits the passes into contiguous groups, one compiled program each, runs them at
the same time from threads and merges their sums (:func:`stream_plan`, :func:`default_streams`: 2 streams for a ugcn
model, 2D or 3D, on the CPU with an even ``T``). Every stream, and a single one, runs the same compiled function
(``_compiled_sampler``: ``run(variables, keys [passes], image)``, the keys split outside). Every pass keeps its key,
so the samples are unchanged; the sums differ by float rounding only (max 2.9e-6 on ``sum_p`` at issue size).
Measured, one process, interleaved rounds, quiet machine (load 1.5-1.6), T = 20 over 128 x 128 x 64 with the default
2D U-Net: 9.7 / 10.3 s with 2 streams against 17.8 / 15.9 s as one program (1.83x / 1.55x in two runs); 3 streams
12.7 s, 4 streams 10.7 s; one program with chunks of 5 (the streams' chunk) 16.7 s, so the gain is the concurrency,
not the chunk. Tried with 2 streams and not kept (T = 20 over 128 x 128 x 16, one process, interleaved rounds,
medians, load 7-9): chunks of 10 per stream 0.97x wall / 1.02x CPU time, 4 streams of 5 passes 0.98x / 0.98x, and
(two worker processes, interleaved) XLA's Eigen convolutions on one thread (``--xla_cpu_multi_thread_eigen=false``)
0.96x. A per-operation profile of the 2-stream sampler at issue size (load 6) looks like the one-program profile
(``benchmarks/profile_mcdo.py``): convolutions ~75 % of operation time (the 128^2 layers ~35 %), batch-norm + ReLU +
dropout 13 %, pooling and concatenation 6 %, everything outside the U-Net (probabilities, running sums, merge) ~1 %.
The 2D stem (1 -> 16 channels, 0.12-0.18 s over 64 slices of 128^2) used to run once per chunk of passes (10 times
with 2 streams of 5 chunks); it now runs once per stream (``VolumeApply.prepare``, within ``SHARED_STEM_BYTES``):
samples bit-identical, CPU time 21.0 s against 21.8 s (medians), wall 10.8 s against 11.2 s, but a median per-round
ratio of only 1.004x (6 rounds, one process, load 2.1): a small saving, kept because it is exact.
Every stream's thread waits for its own program to finish. Before, the threads only dispatched their programs (jax
returns before a program has run) and the caller waited for the results; then, in 15 of 66 calls at issue size (5
runs on a quiet machine), the two programs ran one after the other: 20-25 s instead of 10-12 s, with one core idle
for 12-17 s of the call (``/proc/stat``) and the process's CPU time that of one program (26.5-28.5 s). Waiting in the
threads: 0 of 27 calls (two runs). ``benchmarks/common.py`` records the host's idle and steal time per timed call.

3D (``bench_mcdo.bench_3d``: default 3D U-Net, T = 4 in one chunk): a chunk's passes used to run as ``vmap``
over the dropout keys after the shared stem, which carried the pass axis through XLA:CPU's 3D convolution
loops with copies and zero-filled buffers per layer; they now run as one batch of ``S x patches`` rows with
each pass's masks given (``ugcn.segment.model._patches_fn``). Same process, interleaved rounds, 48^3, load
6.3: 1.13x faster with the default patch batch (0.94x -> 1.06x the loop of single passes), 1.20x with 8
patches per call (0.83x -> 1.00x); at 64^3 (27 patches, load 5.1) the default is 1.26x the loop, and chunks
of 4 beat chunks of 1 (1.17x), so the default chunk stays 4 in 3D too.

3D streams (default 3D U-Net, one process, interleaved rounds, medians): on the issue's brain, 99 x 117 x 95
(~1.1 M voxels), T = 20, 2 streams (2 x 2 chunks of 5 passes) took 130 / 139 s against 161 / 183 s as one
program (1.28x; two rounds, both faster; load 7.7-9.0 on the 2 cores, three other jobs running). At 64^3 (27
patches), T = 8, a quiet machine measured 5.10 s against 7.19 s (1.41x), but under load 7.6-8.5 the streams lost:
24.6-26.1 s against 18.7-23.3 s (0.78x; with every core taken there is no idle time to fill). So the default is
2 streams in 3D too, as in 2D; ``streams=1`` is the choice on a machine that is already busy. A second 64^3 run at
load 2.4-3.6 also lost (0.76x), so small 3D volumes gain only on an idle machine. ``ugcn mcdo`` end to end on the
brain (T = 20, each setting with its own fresh compilation cache, one child process per run, alternating): load
5.4-6.0: cold 161 s with 2 streams against 167 s (1.04x), cached 97.5 s against 118 s (1.21x); load 7.0-9.6: cold
255 s against 244 s (0.96x), cached 148 s against 143 s (0.97x). Peak RSS of the whole command: 1.21-1.44 GB with
2 streams against 0.79-0.99 GB (two 5-pass chunks alive at once instead of one 4-pass chunk); the 2-stream run
compiles 11 programs against 8 (56-94 s of compilation either way).

:func:`samples_from_probability_maps` and :func:`load_sample_maps` accept the ``T`` probability maps of
any framework (a 4D NIfTI ``(X, Y, Z, T)`` of foreground probabilities), so that the uncertainty
estimators, method R and method L work on models that were not trained with ``ugcn``.
"""
from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ugcn.io import PathLike, Volume, load_volume
from ugcn.uncertainty.stats import SampleStats, accumulate, empty_stats, merge

VolumeFn = Callable[[jax.Array, jnp.ndarray], jnp.ndarray]


class MCResult(NamedTuple):
    """Result of :func:`mc_sample`.

    Attributes:
      stats: :class:`SampleStats` over the ``T`` passes, sums ``f32[X, Y, Z, C]``.
      samples: ``f32[T, X, Y, Z, C]`` when ``keep_samples``, else ``None``.
    """

    stats: SampleStats
    samples: Optional[jnp.ndarray]


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _split_weights(volume_fn: VolumeFn) -> tuple[Callable, Any]:
    """``(apply(variables, key, image), variables)`` of a volume function.

    Functions that carry their weights apart (``apply`` and ``variables`` attributes, as
    ``ugcn.segment.make_volume_fn`` returns) share one compiled sampler per architecture, with the weights as
    an argument; any other ``fn(key, image)`` gets a sampler of its own.
    """
    apply, variables = getattr(volume_fn, "apply", None), getattr(volume_fn, "variables", None)
    if callable(apply) and variables is not None:
        return apply, variables
    return _ignoring_weights(volume_fn), None


@functools.lru_cache(maxsize=16)
def _ignoring_weights(volume_fn: VolumeFn) -> Callable:
    return lambda variables, key, image: volume_fn(key, image)


def reduce_passes(
    pass_fn: Callable, variables: Any, per_pass: Any, image: jnp.ndarray, n_samples: int, chunk_size: int,
    keep_samples: bool,
) -> MCResult:
    """The ``T`` passes ``pass_fn(variables, per_pass[t], image)`` reduced chunk by chunk (traced, not jitted).

    The shared core of every sample source (:func:`mc_sample`, :func:`ugcn.uncertainty.tta.tta_sample`):
    ``lax.scan`` over ``ceil(T / chunk_size)`` chunks, ``vmap`` over a chunk's passes, running
    :class:`SampleStats` (padding passes of the last chunk repeat real inputs and get weight 0).

    Args:
      pass_fn: ``fn(variables, inputs_t, image) -> probs f32[X, Y, Z, C]`` for one pass; when it has a
        ``passes(variables, inputs [S], image) -> f32[S, X, Y, Z, C]`` attribute, that computes a chunk; when it
        also has ``passes_raw(variables, inputs [S], image) -> f32[S, *raw]`` and ``to_volume(a [..., *raw],
        image) -> [..., X, Y, Z, C]`` (a crop and transpose, e.g. the 2D model's slice-major layout), the chunks
        are summed in the raw layout and the sums (and kept samples) mapped once at the end; when it also has
        ``prepare(variables, image) -> prepared`` and ``passes_prepared(variables, inputs [S], prepared) -> f32[S,
        *raw]``, ``prepare`` runs once before the chunks (work that no pass input touches).
      per_pass: pytree of arrays with leading axis ``T`` (a pass's PRNG key, transform, ...).
      n_samples, chunk_size: ``T`` and the passes per ``vmap`` (``chunk_size <= T``), static.
      keep_samples: also return all ``T`` samples.

    Returns:
      :class:`MCResult`.
    """
    n_chunks = math.ceil(n_samples / chunk_size)
    padded = n_chunks * chunk_size
    # A pass function that can share work between passes (a 3D model's patch extraction and stem,
    # ugcn.segment.model.VolumeApply.passes) computes a chunk itself; vmap otherwise. One that also gives its
    # passes in its own layout (passes_raw, with to_volume: the 2D model's slice-major probabilities) is summed
    # in that layout and the sums mapped once: summing transposed samples cost XLA:CPU several times more.
    # Every other chunk function's layout is the volume's own (to_volume: the identity).
    # A function with ``prepare`` and ``passes_prepared`` (raw layout) does the work no pass input touches once,
    # before the scan (the 2D model's slices and stem), and its chunks start from that.
    to_volume: Optional[Callable] = getattr(pass_fn, "to_volume", None)
    prepare = getattr(pass_fn, "prepare", None) if to_volume is not None else None
    batched_fn = getattr(pass_fn, "passes_prepared" if prepare is not None else "passes_raw", None)
    if to_volume is None or batched_fn is None:
        batched_fn = getattr(pass_fn, "passes", None) or jax.vmap(pass_fn, in_axes=(None, 0, None))
        to_volume = prepare = None
    data = image if prepare is None else prepare(variables, image)

    def finish(a: jnp.ndarray) -> jnp.ndarray:
        return a if to_volume is None else to_volume(a, image)

    def pad_and_chunk(x):
        x = jnp.concatenate([x, x[: padded - n_samples]], axis=0) if padded > n_samples else x
        return x.reshape((n_chunks, chunk_size) + x.shape[1:])

    chunks = jax.tree_util.tree_map(pad_and_chunk, per_pass)
    weights = (jnp.arange(padded) < n_samples).astype(jnp.float32).reshape(n_chunks, chunk_size)
    # the shape of a whole chunk: a raw layout's padding can depend on the passes per call
    first_chunk = jax.tree_util.tree_map(lambda x: x[0], chunks)
    probs_shape = jax.eval_shape(lambda c, x: batched_fn(variables, c, x), first_chunk, data).shape[1:]
    init = empty_stats(probs_shape)

    def step(stats, chunk):
        chunk_inputs, chunk_weights = chunk
        probs = batched_fn(variables, chunk_inputs, data).astype(jnp.float32)
        stats = accumulate(stats, probs, chunk_weights)
        return stats, (probs if keep_samples else None)

    stats, collected = jax.lax.scan(step, init, (chunks, weights))
    stats = stats._replace(sum_p=finish(stats.sum_p), sum_p2=finish(stats.sum_p2), sum_plogp=finish(stats.sum_plogp))
    if keep_samples:
        collected = finish(collected.reshape((padded,) + collected.shape[2:])[:n_samples])
    return MCResult(stats, collected)


@functools.lru_cache(maxsize=16)
def _compiled_sampler(apply: Callable, n_passes: int, chunk_size: int, keep_samples: bool) -> Any:
    """One jitted ``run(variables, keys [n_passes], image) -> MCResult`` per (apply, passes, chunk, keep); jit caches
    per input shape. The keys come split (``jax.random.split(key, T)[first:first + n_passes]``), so one program
    serves :func:`mc_sample` as one stream or as several, and the cohort path (traced inside its own jit)."""

    def run(variables, keys, image):
        return reduce_passes(apply, variables, keys, image, n_passes, chunk_size, keep_samples)

    return jax.jit(run)


#: Concurrent programs per ugcn model kind (the U-Net's ``dims``) on the CPU, measured (module docstring).
MODEL_STREAMS = {2: 2, 3: 2}


def model_dims(apply: Any) -> Optional[int]:
    """The U-Net's ``dims`` (2 or 3) when ``apply`` is a ugcn segmentation model's volume function
    (``ugcn.segment.make_volume_fn``'s ``apply``, a :class:`ugcn.segment.model.VolumeApply`), else ``None``."""
    from ugcn.segment.model import VolumeApply  # lazy: the sampler needs the model code for this test only

    return apply.dims if isinstance(apply, VolumeApply) else None


def default_streams(volume_fn: VolumeFn, n_samples: int) -> int:
    """The concurrent programs :func:`mc_sample` uses by default: :data:`MODEL_STREAMS` for a ugcn model's volume
    function (:func:`model_dims`) on the CPU with an even ``T`` (an odd ``T`` would compile two programs), else 1
    (other functions and backends: not measured)."""
    apply, _ = _split_weights(volume_fn)
    dims = model_dims(apply)
    streams = 1 if dims is None else MODEL_STREAMS.get(dims, 1)
    return streams if n_samples % 2 == 0 and jax.default_backend() == "cpu" else 1


def stream_plan(n_samples: int, chunk_size: int, streams: int, *, shared_chunk: bool = False
                ) -> list[tuple[int, int, int]]:
    """How :func:`mc_sample` splits ``T`` passes over ``streams`` concurrent programs: ``(first pass, passes,
    chunk)`` per stream, contiguous and in order. A stream aims at ``chunk_size`` passes per step, or with
    ``shared_chunk`` at ``ceil(chunk_size / streams)`` (the streams share the chunk: memory ~ ``chunk_size``
    passes); its chunk is the largest divisor of its passes up to that aim + 1 when that is at least half the aim
    (T = 20, chunk 4, 2 streams: 2 x 2 chunks of 5; shared: 2 x 5 chunks of 2; no padding pass), else the aim
    clipped to its passes.

    ``mc_sample`` shares the chunk for 2D models, measured faster: T = 20 over 128 x 128 x 16, default 2D U-Net,
    2 streams of chunks of 2 against chunks of 5, 1.06x wall / 1.09x CPU time (14 rounds, load 2.1-2.3), 0.99x /
    1.06x (10 rounds, load 4.5-5.3); one process, interleaved rounds, medians of per-round ratios (two programs'
    calls of 5 passes compete for the cache; as one program, chunks of 2 were 0.92x). 3D: not measured.

    Why: XLA:CPU keeps the two cores of the measured machine only ~70 % busy on one 2D sampler (the elementwise
    Winograd transforms, pooling and sums run on one thread), so two programs over halves of the passes, run
    from two threads at once, overlap each other's serial parts: T = 20 over 128 x 128 x 16 took 3.44 s against
    4.74 s for one program (1.38x; one process, interleaved rounds, load 1.5).
    """
    streams = max(1, min(int(streams), n_samples))
    if streams == 1:
        return [(0, n_samples, min(chunk_size, n_samples))]
    aim = -(-chunk_size // streams) if shared_chunk else chunk_size
    plan, first = [], 0
    for i in range(streams):
        size = n_samples // streams + (i < n_samples % streams)
        divisor = max(d for d in range(1, min(size, aim + 1) + 1) if size % d == 0)
        chunk = divisor if 2 * divisor >= min(aim, size) else min(aim, size)
        plan.append((first, size, chunk))
        first += size
    return plan


def check_sampling_inputs(volume_fn: VolumeFn, image, key: jax.Array, n_samples, chunk_size) -> tuple:
    """Validate the common inputs of a sample source; returns ``(image f32 jnp, n_samples, chunk_size)``.

    Raises:
      ValueError: bad ``n_samples``/``chunk_size``, an image that is not 3D/4D or not finite, a
        ``volume_fn`` whose output is not ``[X, Y, Z, C]`` with ``C >= 2`` on the image grid.
    """
    n_samples, chunk_size = check_counts(n_samples, chunk_size)
    # Host-side checks: numpy costs one pass and, unlike eager jnp ops, no compilation.
    host_image = np.asarray(image, np.float32)
    if host_image.ndim not in (3, 4):
        raise ValueError(f"image must be [X, Y, Z] or [X, Y, Z, M], got shape {host_image.shape}")
    if not np.all(np.isfinite(host_image)):
        raise ValueError("image holds NaN or infinite values")
    image = jnp.asarray(image, jnp.float32)
    check_volume_fn_output(volume_fn, key, image)
    return image, n_samples, chunk_size


def check_counts(n_samples, chunk_size) -> tuple[int, int]:
    """``(T, passes per chunk)``: positive integers, the chunk clipped to ``T``; ``ValueError`` otherwise."""
    n_samples = _check_positive_int(n_samples, "n_samples")
    return n_samples, min(_check_positive_int(chunk_size, "chunk_size"), n_samples)


def check_volume_fn_output(volume_fn: VolumeFn, key: jax.Array, image) -> None:
    """``ValueError`` unless ``volume_fn(key, image)`` gives probabilities ``[X, Y, Z, C]``, ``C >= 2``, on the grid
    of ``image`` (an array or a ``jax.ShapeDtypeStruct`` ``[X, Y, Z(, M)]``); traced only, nothing runs."""
    out = jax.eval_shape(volume_fn, key, image)
    if out.ndim != 4 or out.shape[:3] != image.shape[:3] or out.shape[-1] < 2:
        raise ValueError(
            f"volume_fn must return probabilities [X, Y, Z, C] with C >= 2 on the image grid {image.shape[:3]}, "
            f"got shape {out.shape}"
        )


def check_finite_result(result: MCResult) -> MCResult:
    """``ValueError`` when the summed probabilities hold NaN or inf; the result otherwise."""
    if not np.all(np.isfinite(np.asarray(result.stats.sum_p))):
        raise ValueError("volume_fn produced NaN or infinite probabilities")
    return result


def mc_sample(
    volume_fn: VolumeFn,
    image,
    key: jax.Array,
    *,
    n_samples: int = 20,
    chunk_size: int = 4,
    keep_samples: bool = False,
    streams: Optional[int] = None,
) -> MCResult:
    """``T`` stochastic passes of ``volume_fn`` over ``image``, reduced to running statistics.

    Args:
      volume_fn: ``fn(key, image) -> probs f32[X, Y, Z, C]`` (``C >= 2``, class axis last), pure and
        vmap-able over ``key`` (e.g. ``ugcn.segment.make_volume_fn(model, stochastic=True)``). Keep the
        same function object between calls: the compiled sampler is cached per function.
      image: ``f32[X, Y, Z]`` or ``f32[X, Y, Z, M]``.
      key: a PRNG key; pass ``t`` uses ``jax.random.split(key, n_samples)[t]``.
      n_samples: ``T >= 1``.
      chunk_size: passes evaluated together by ``vmap`` (memory ~ chunk_size passes); clipped to ``T``.
      keep_samples: also return all samples ``f32[T, X, Y, Z, C]`` (memory grows with ``T``).
      streams: the passes split into this many contiguous groups, each one compiled program, run at the same
        time from threads and merged (:func:`stream_plan`; memory ~ streams x chunk passes, 2D: ~ chunk); the samples
        do not change, the sums only by float rounding (the order of addition). ``None``: :func:`default_streams`.

    Returns:
      :class:`MCResult` ``(stats, samples or None)``.

    Raises:
      ValueError: bad ``n_samples``/``chunk_size``/``streams``, a non-finite image, a ``volume_fn`` whose output
        has no class axis, or non-finite probabilities.
    """
    image, n_samples, chunk_size = check_sampling_inputs(volume_fn, image, key, n_samples, chunk_size)
    if streams is None:
        streams = default_streams(volume_fn, n_samples)
    streams = _check_positive_int(streams, "streams")
    apply, variables = _split_weights(volume_fn)
    plan = stream_plan(n_samples, chunk_size, streams, shared_chunk=model_dims(apply) == 2)
    keys = jax.random.split(key, n_samples)

    def run(first: int, size: int, chunk: int) -> MCResult:
        stream_keys = keys if size == n_samples else keys[first:first + size]
        return _compiled_sampler(apply, size, chunk, bool(keep_samples))(variables, stream_keys, image)

    def run_to_end(first: int, size: int, chunk: int) -> MCResult:
        # Each thread waits for its own program. When the threads only dispatched it (jax returns before a program
        # has run) and left the waiting to the caller, the two programs ran one after the other in about one call
        # in five: twice the time with a core idle (15 of 66 calls at issue size against 0 of 27; module docstring).
        return jax.block_until_ready(run(first, size, chunk))

    if len(plan) == 1:
        result = run(*plan[0])
    else:
        # Each distinct stream program compiled here, once, before the threads start: two threads' first calls of
        # the same 3D program were seen compiling it twice at once (bench_compile, brain: 23.5 s and 14.4 s).
        for first, size, chunk in {(size, chunk): (first, size, chunk) for first, size, chunk in plan}.values():
            _compiled_sampler(apply, size, chunk, bool(keep_samples)).lower(
                variables, keys[first:first + size], image).compile()
        with ThreadPoolExecutor(len(plan)) as pool:  # XLA releases the GIL: the programs run at the same time
            parts = [f.result() for f in [pool.submit(run_to_end, *p) for p in plan]]
        stats = functools.reduce(merge, [p.stats for p in parts])
        samples = jnp.concatenate([p.samples for p in parts if p.samples is not None]) if keep_samples else None
        result = MCResult(stats, samples)
    return check_finite_result(result)


def result_from_canonical(result: MCResult, affine) -> MCResult:
    """A result computed on ``ugcn.io.to_canonical(image, affine)`` (the orientation ugcn's models run in)
    mapped back to the image's own voxel order: sums ``f32[X, Y, Z, C]``, samples ``f32[T, X, Y, Z, C]``."""
    from ugcn.io import from_canonical

    stats = result.stats._replace(**{name: jnp.asarray(from_canonical(np.asarray(getattr(result.stats, name)), affine))
                                     for name in ("sum_p", "sum_p2", "sum_plogp")})
    samples = None if result.samples is None else jnp.asarray(
        from_canonical(np.asarray(result.samples), affine, axis=1))
    return MCResult(stats, samples)


def samples_from_probability_maps(maps, *, atol: float = 1e-2) -> np.ndarray:
    """Turn ``T`` probability maps of any framework into class-probability samples.

    Args:
      maps: ``[T, X, Y, Z]`` foreground probabilities (binary; become ``[1 - p, p]``) or
        ``[T, X, Y, Z, C]`` class probabilities (``C >= 2``, summing to 1 within ``atol``).

    Returns:
      ``f32[T, X, Y, Z, C]`` (numpy).

    Raises:
      ValueError: wrong number of dimensions, NaN/inf, values outside ``[0, 1]``, class probabilities that
        do not sum to 1.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim not in (4, 5):
        raise ValueError(
            f"probability maps must be [T, X, Y, Z] (foreground) or [T, X, Y, Z, C], got shape {maps.shape}"
        )
    if maps.shape[0] < 1:
        raise ValueError("probability maps hold no sample (T = 0)")
    if not np.all(np.isfinite(maps)):
        bad = int(maps.size - np.count_nonzero(np.isfinite(maps)))
        raise ValueError(f"probability maps hold {bad} NaN or infinite values")
    lo, hi = float(maps.min()), float(maps.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"probability maps must lie in [0, 1], found values in [{lo:.4g}, {hi:.4g}] "
            "(apply the sigmoid/softmax before exporting logits)"
        )
    if maps.ndim == 4:
        return np.stack([1.0 - maps, maps], axis=-1)
    if maps.shape[-1] < 2:
        raise ValueError(f"class axis must have C >= 2, got shape {maps.shape}")
    worst = float(np.max(np.abs(maps.sum(-1) - 1.0)))
    if worst > atol:
        raise ValueError(f"class probabilities must sum to 1 at every voxel (off by up to {worst:.3g})")
    return maps


def load_sample_maps(path: PathLike) -> tuple[np.ndarray, Volume]:
    """Read a 4D NIfTI ``(X, Y, Z, T)`` of ``T`` foreground probability maps (MC samples of any model).

    Returns:
      ``(samples f32[T, X, Y, Z, 2], volume)`` where ``volume`` is the file as read (its ``affine`` and
      ``header`` are those of the maps).

    Raises:
      ValueError: not a readable NIfTI, not 4D, NaN/inf, values outside ``[0, 1]``.
    """
    volume = load_volume(path, ndim=(3, 4), allow_nonfinite=True)
    if volume.array.ndim != 4:
        raise ValueError(
            f"{path}: expected a 4D NIfTI (X, Y, Z, T) of T probability maps, got a 3D volume of shape "
            f"{volume.shape} (stack the MC samples along the 4th axis)"
        )
    try:
        samples = samples_from_probability_maps(np.moveaxis(volume.array, -1, 0))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return samples, volume
