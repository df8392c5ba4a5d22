#!/usr/bin/env bash
# Run the benchmark suite on an accelerator machine (GPU) within about 5 minutes and keep its JSON.
#
# Usage (from the repository root):  bash benchmarks/device_check.sh [OUT_DIR]
#   OUT_DIR: where the results go (default: $OUT if set, else ./device-check). Writes there:
#     results/*.json   every benchmark's results file (benchmarks/results/ of this run)
#     summary.json     jax/jaxlib versions, devices, XLA_FLAGS, load, and each step's exit code and seconds
#     *.log            each step's output
# Nothing in CI depends on this script. It installs what it needs: the package (pip install -e .), JAX's
# CUDA wheels when an NVIDIA GPU is present and jax sees none, and the benchmark extras when they install.
# Every step has its own time limit; a failing step is recorded and the next one runs.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-${OUT:-$ROOT/device-check}}"
mkdir -p "$OUT_DIR/results"
cd "$ROOT"
PY="${PYTHON:-python3}"
STEPS_JSON="$OUT_DIR/steps.jsonl"
: > "$STEPS_JSON"
# The whole run stays within DEVICE_CHECK_SECONDS (default 290): each step gets at most what is left.
DEADLINE=$(( $(date +%s) + ${DEVICE_CHECK_SECONDS:-290} ))

step() {  # step NAME SECONDS COMMAND...
  local name="$1" limit="$2"; shift 2
  local left=$(( DEADLINE - $(date +%s) - 10 ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    printf '{"step": "%s", "exit_code": null, "seconds": 0, "skipped": "out of time"}\n' "$name" >> "$STEPS_JSON"
    echo "[device_check] $name: skipped (out of time)"
    return 0
  fi
  local t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  printf '{"step": "%s", "exit_code": %d, "seconds": %d, "limit_s": %d}\n' \
    "$name" "$rc" "$(( $(date +%s) - t0 ))" "$limit" >> "$STEPS_JSON"
  echo "[device_check] $name: exit $rc ($(tail -n 1 "$OUT_DIR/$name.log" 2>/dev/null | cut -c1-160))"
  return 0
}

step install 90 "$PY" -m pip install --quiet -e .
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi > "$OUT_DIR/nvidia-smi.log" 2>&1
  if ! "$PY" -c "import jax, sys; sys.exit(0 if jax.default_backend() == 'gpu' else 1)" >/dev/null 2>&1; then
    step install-jax-cuda 120 "$PY" -m pip install --quiet -U "jax[cuda12]"
  fi
fi
# The benchmark extras (PyTorch for the comparisons) are optional: the benchmarks skip what is missing.
"$PY" -c "import torch" >/dev/null 2>&1 || step install-bench 60 "$PY" -m pip install --quiet -e ".[bench]"

# Small sizes only, one limit per script, the most telling first so a slow machine still yields most.
export PYTHONUNBUFFERED=1
for topic in conv3d conv2d mcdo segment refine propagation lesion compile; do
  if [ -f "benchmarks/bench_$topic.py" ]; then
    step "bench_$topic" 90 "$PY" benchmarks/run_all.py --size small --only "$topic"
  fi
done
cp benchmarks/results/*.json "$OUT_DIR/results/" 2>/dev/null

"$PY" - "$OUT_DIR" <<'PYEOF'
import json, os, sys
out = sys.argv[1]
info = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "load_average": list(os.getloadavg())}
try:
    import jax, jaxlib
    info.update(jax=jax.__version__, jaxlib=jaxlib.__version__, backend=jax.default_backend(),
                devices=[str(d) for d in jax.devices()])
except Exception as err:  # noqa: BLE001 - recorded, not raised
    info["jax_error"] = repr(err)
with open(os.path.join(out, "steps.jsonl")) as f:
    info["steps"] = [json.loads(line) for line in f if line.strip()]
info["results"] = sorted(p for p in os.listdir(os.path.join(out, "results")) if p.endswith(".json"))
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(info, f, indent=2)
print(json.dumps({k: info[k] for k in ("backend", "devices", "results") if k in info}))
PYEOF
