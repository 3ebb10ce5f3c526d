#!/usr/bin/env bash
# Creates the training environment training/.venv (git-ignored): torch (CPU wheel) + MONAI + the hieseg runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv training/.venv
training/.venv/bin/pip install -q --upgrade pip
training/.venv/bin/pip install -q -r training/requirements.txt -e .
training/.venv/bin/python -c "import torch, monai, hieseg; print('training env ok: torch', torch.__version__, 'monai', monai.__version__)"
