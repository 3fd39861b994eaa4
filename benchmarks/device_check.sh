#!/usr/bin/env bash
# One accelerator run (under 8 minutes on one GPU): the benchmark table (all models, ratios
# against jax.grad, memory, compile time, the CNN step against PyTorch eager -- on CUDA too when
# torch sees a GPU), a Fashion-MNIST-sized CNN epoch (468 batches of 128, scanned vs Python loop),
# the checker's three timed cases with their verdicts, and the data-parallel CNN step on all
# local devices.
#
#   benchmarks/device_check.sh            # the full run (paste its output into docs/benchmarks.md)
#   benchmarks/device_check.sh --quick    # tiny sizes, seconds on CPU (run by tests/test_device_check.py)
#
# Run from the repository root with the project's Python first on PATH (or PYTHON=/path/to/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ "${1:-}" == "--quick" ]]; then
  BENCH=(--quick --repeats 1 --min-block 0 --gemm-n 64 --torch-threads 1 --silent)
  EPOCH=(--batches 2 --batch 8 --rounds 1)
  PAR=(--batch-per-device 4 --side 12 --widths 4,8,16 --rounds 1 --steps 1)
  CHECK=(--rounds 1 --cases layer)
else
  BENCH=(--repeats 9 --min-block 0.05)  # with progress lines: a part cut off still shows its rows
  EPOCH=(--batches 468 --batch 128 --rounds 1)
  PAR=(--batch-per-device 128 --rounds 5)
  CHECK=(--rounds 1)
fi
echo "== device_check $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)"
"$PY" - <<'PYEOF'
import jax
print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
try:
    import torch
    print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
except ImportError:
    print("torch not installed: the PyTorch peer rows are skipped")
PYEOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
# Each part runs under its own time limit and a failing part does not stop the ones after it, so a
# short lease still brings back every figure that could be measured; the exit status counts failures.
failed=0
part() {  # part SECONDS TITLE COMMAND...
  local limit=$1 title=$2 t0=$SECONDS rc=0
  shift 2
  echo "== $title"
  timeout "$limit" "$@" || rc=$?
  echo "== $title: rc $rc, $((SECONDS - t0)) s"
  [[ $rc == 0 ]] || failed=$((failed + 1))
}
part "${LIMIT_BENCH:-300}" "benchmark table (python -m jaxbp bench)" "$PY" -m jaxbp bench "${BENCH[@]}" \
  ${BENCH_JSON:+--json "$BENCH_JSON"}
part "${LIMIT_EPOCH:-120}" "CNN epoch (Fashion-MNIST shapes, random inputs)" "$PY" benchmarks/cnn_epoch.py "${EPOCH[@]}"
part "${LIMIT_CHECK:-150}" "the checker on this device (fresh processes, verdicts)" \
  "$PY" benchmarks/checker_speed.py "${CHECK[@]}"
part "${LIMIT_PAR:-60}" "data-parallel step on all local devices" "$PY" benchmarks/parallel_step.py "${PAR[@]}"
echo "== device_check done, $failed part(s) failed, $SECONDS s"
exit "$failed"
