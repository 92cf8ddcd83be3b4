#!/usr/bin/env bash
# Issue 15's GPU check in a few minutes: GPT-2 124M pretraining at context 1024 on one CUDA GPU.
#   1. the fast path under torch.compile with a batch that fills the GPU: tokens/s and MFU against
#      the card's dense bfloat16 peak (the table in bench_pretraining.py; --peak-tflops otherwise);
#   2. the same settings eager, at a smaller batch the book's attention fits in: the book path, the
#      fast path and transformers' GPT-2 side by side (nanoGPT too when NANOGPT names its model.py).
# Every figure is printed with the GPU, torch version and load average; the log goes to $LOG.
#
# Run from anywhere:  bash benchmarks/gpu_check.sh
# Settings (environment): PYTHON (python3), BATCH (64: about 60 GB at bfloat16 on an 80 GB card),
#   EAGER_BATCH (8), CONTEXT (1024), STEPS (20), CONFIG (124M), DEVICE (cuda), NANOGPT (a path),
#   LOG (outputs/gpu_check.log). A CPU smoke test of the script itself:
#   DEVICE=cpu CONFIG=small CONTEXT=64 BATCH=2 EAGER_BATCH=2 STEPS=1 bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
BATCH=${BATCH:-64}
EAGER_BATCH=${EAGER_BATCH:-8}
CONTEXT=${CONTEXT:-1024}
STEPS=${STEPS:-20}
CONFIG=${CONFIG:-124M}
DEVICE=${DEVICE:-cuda}
LOG=${LOG:-outputs/gpu_check.log}
mkdir -p "$(dirname "$LOG")"

"$PYTHON" - "$DEVICE" <<'EOF'
import importlib.util, sys
import torch
missing = [name for name in ("tiktoken", "matplotlib") if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"missing packages: {', '.join(missing)}; pip install -r requirements.txt")
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA GPU; install a CUDA build of torch")
print("torch", torch.__version__, "| transformers:",
      "installed" if importlib.util.find_spec("transformers") else "missing (its row is skipped)")
EOF
if [ "$DEVICE" = cuda ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee -a "$LOG"
fi

nanogpt_args=()
if [ -n "${NANOGPT:-}" ]; then nanogpt_args=(--nanogpt "$NANOGPT"); fi

echo "== 1. fast path + torch.compile, batch $BATCH, context $CONTEXT ==" | tee -a "$LOG"
"$PYTHON" benchmarks/bench_pretraining.py --device "$DEVICE" --config "$CONFIG" --contexts "$CONTEXT" \
    --batch-size "$BATCH" --paths compile --steps "$STEPS" --warmup 3 2>&1 | tee -a "$LOG"

echo "== 2. eager side by side, batch $EAGER_BATCH, context $CONTEXT ==" | tee -a "$LOG"
"$PYTHON" benchmarks/bench_pretraining.py --device "$DEVICE" --config "$CONFIG" --contexts "$CONTEXT" \
    --batch-size "$EAGER_BATCH" --paths book fast hf nanogpt "${nanogpt_args[@]}" --steps "$STEPS" \
    2>&1 | tee -a "$LOG"
echo "log: $LOG"
