#!/usr/bin/env bash
# Creates the training environment training/.venv (git-ignored): the pinned torch (CPU wheel) + MONAI, the hieseg
# runtime and the training package itself, both editable (`pip install -e . -e training`).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv training/.venv
training/.venv/bin/pip install -q --upgrade pip
training/.venv/bin/pip install -q -r training/requirements.txt -e . -e training
(cd / && "$OLDPWD/training/.venv/bin/python" -c "import torch, monai, hieseg, training.cli; print('training env ok: torch', torch.__version__, 'monai', monai.__version__, '- training from', training.cli.__file__)")
