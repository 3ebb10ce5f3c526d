#!/usr/bin/env bash
# The GPU cross-validation in one prepared command (see training/device_cv.py and training/README.md).
#   training/device_cv.sh wheels   here: MONAI's wheel into .gpu/ (the GPU machine reaches no index)
#   training/device_cv.sh run      there: pip-installs the carried wheel, trains every member x fold x seed it can in
#                                  the budget, computes their OOF maps there, writes networks + maps to $OUT
# Usage with the device tool: carry [".gpu"], command "training/device_cv.sh run --budget 450", timeout 580 s.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  wheels)
    python3 -m pip download -q --no-deps --only-binary=:all: -d .gpu "monai==$(sed -n 's/^monai==//p' training/requirements.txt)"
    ls -la .gpu ;;
  run)
    shift
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/monai-*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    python3 -c 'import torch, monai; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "monai", monai.__version__)'
    exec python3 -m training.device_cv run "$@" ;;
  *) echo "usage: $0 wheels | run [python -m training.device_cv run options]" >&2; exit 2 ;;
esac
