"""The persistent compilation cache as the CLI sets it up, and bench_compile's counter of compiled programs."""
import os

PROBE = r"""
import jax, jax.numpy as jnp
from ugcn.cli import enable_compilation_cache
enable_compilation_cache()
x = jnp.arange(5.0)
y = jax.jit(lambda v: jnp.sin(v) * 2.0 + 1.0)(x)  # compiles in well under jax's default 1 s threshold
stats["value"] = float(y.sum())
print("COMPILE_STATS " + json.dumps(stats))
"""


def test_second_run_compiles_nothing(tmp_path, load_benchmark):
    bench = load_benchmark("bench_compile")
    env = dict(os.environ, UGCN_COMPILATION_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    first = bench.run_child(bench.LISTENERS + PROBE, [], env)
    second = bench.run_child(bench.LISTENERS + PROBE, [], env)
    names = sorted(name for name, _ in first["compiled"])
    assert any("lambda" in n for n in names) and first["loaded_programs"] == 0
    # the second run loads every program the first compiled, and compiles none
    assert second["compiled_programs"] == 0 and second["compile_seconds"] == 0.0
    assert sorted(name for name, _ in second["loaded"]) == names
    assert second["hits"] == len(names) == first["misses"]
    assert second["value"] == first["value"]


def test_cache_off_compiles_every_run(tmp_path, load_benchmark):
    bench = load_benchmark("bench_compile")
    env = dict(os.environ, UGCN_COMPILATION_CACHE="off", JAX_PLATFORMS="cpu")
    runs = [bench.run_child(bench.LISTENERS + PROBE, [], env) for _ in range(2)]
    assert all(r["compiled_programs"] >= 1 and r["loaded_programs"] == 0 and r["hits"] == 0 for r in runs)
