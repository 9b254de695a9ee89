#!/usr/bin/env bash
# The GPU check for streaming Qwen3-TTS, in one command (about 5 minutes on one GPU; the first run also builds the
# full-size random model, once, into $DUPLEX_CACHE_DIR/bench):
#
#   1. the GPU-only tests (pytest -m gpu): CUDA graphs captured with torch's check_input_liveness, equal to the eager
#      loop through batches of 1 -> 2 -> 1 -> 4 streams on the tiny (fp32) and the full-size (bf16) random model,
#      cache growth and recapture, a speech recogniser busy on the same GPU during capture, the SDPA kernel the
#      decode attention gets (printed), a second GPU when there is one;
#   2. first audio and real-time factor for 1, 4 and 10 streams in bf16 against upstream generate_voice_clone on the
#      same GPU (benchmarks/tts_gpu.py; pass --write to record its section in docs/benchmarks.md).
#
# Without a CUDA GPU it says so and exits 0. Extra arguments go to the benchmark (e.g. --streams 1,4 --write).
# PYTHON selects the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu-check: skipped: no CUDA GPU visible to torch (nothing to check on this machine)"
    exit 0
fi
"$PYTHON" -c 'import torch; print("gpu-check:", torch.cuda.get_device_name(0), "| torch", torch.__version__,
"| CUDA", torch.version.cuda, "| GPUs:", torch.cuda.device_count())'

echo "gpu-check: GPU-only tests"
"$PYTHON" -m pytest -m gpu tests/processors/qwen3_tts -q -rs -s -p no:cacheprovider

echo "gpu-check: first audio and RTF against upstream"
"$PYTHON" -m benchmarks.tts_gpu "$@"
echo "gpu-check: done"
