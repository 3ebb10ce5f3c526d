#!/usr/bin/env bash
# Set up .venv/ (CPU runtime, evaluation extras, test tools) and run the product on the bundled sample case.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt -e .
.venv/bin/python inference.py --input test/input --output out/sample
