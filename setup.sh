#!/usr/bin/env bash
# Set up .venv/ (CPU runtime, evaluation extras, test tools) and run the product on the bundled sample case.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
# Python 3.11+ first: the pinned numpy 2.4 has no wheels for 3.10, and pip would fail much later and less clearly.
version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
case "$version" in
  3.1[1-9]|3.[2-9][0-9]) ;;
  *) echo "setup.sh: hieseg needs Python 3.11 or newer; $PYTHON is ${version:-not a working Python} (set PYTHON=python3.11)" >&2
     exit 1 ;;
esac
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt -e .
.venv/bin/python inference.py --input test/input --output out/sample
