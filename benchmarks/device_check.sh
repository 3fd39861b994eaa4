#!/usr/bin/env bash
# One accelerator run (under 8 minutes on one GPU): the benchmark table (all models, ratios
# against jax.grad, memory, compile time, the CNN step against PyTorch eager -- on CUDA too when
# torch sees a GPU), a Fashion-MNIST-sized CNN epoch (468 batches of 128, scanned vs Python loop),
# and the data-parallel CNN step on all local devices.
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
  BENCH=(--quick --repeats 1 --min-block 0 --gemm-n 64 --torch-threads 1)
  EPOCH=(--batches 2 --batch 8 --rounds 1)
  PAR=(--batch-per-device 4 --side 12 --widths 4,8,16 --rounds 1 --steps 1)
else
  BENCH=(--repeats 9 --min-block 0.05)
  EPOCH=(--batches 468 --batch 128 --rounds 1)
  PAR=(--batch-per-device 128 --rounds 5)
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
echo "== benchmark table (python -m jaxbp bench)"
"$PY" -m jaxbp bench "${BENCH[@]}" --silent
echo "== CNN epoch (Fashion-MNIST shapes, random inputs)"
"$PY" benchmarks/cnn_epoch.py "${EPOCH[@]}"
echo "== data-parallel step on all local devices"
"$PY" benchmarks/parallel_step.py "${PAR[@]}"
echo "== device_check done"
