#!/usr/bin/env bash
# Build the wheel and the sdist, install the wheel with the [cpu] extra into a fresh venv, and segment the sample
# case from outside the checkout, with the command line and with the Python API; the mask must be voxel-identical
# to the checkout's (out/sample from ./setup.sh, when present). CI runs this after the test suite.
#
#   scripts/check_wheel.sh            # DIST=dist (wheel + sdist land there), WORK=build/wheel-check
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
python="${PYTHON:-python3}"
dist="${DIST:-dist}"
work="${WORK:-build/wheel-check}"
version="$(sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' hieseg/version.py)"
rm -rf "$work" && mkdir -p "$work" "$dist"
rm -f "$dist/hieseg-$version"*.whl "$dist/hieseg-$version.tar.gz"

# 1. wheel + sdist (python -m build makes the sdist, then the wheel from the unpacked sdist: both are checked)
"$python" -m venv "$work/build-venv"
"$work/build-venv/bin/python" -m pip install -q --disable-pip-version-check build
"$work/build-venv/bin/python" -m build --outdir "$dist" . > "$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; exit 1; }
wheel="$dist/hieseg-$version-py3-none-any.whl"
sdist="$dist/hieseg-$version.tar.gz"
[[ -f "$wheel" && -f "$sdist" ]] || { echo "check_wheel.sh: build made no $wheel / $sdist" >&2; exit 1; }
echo "check_wheel.sh: built $(du -h "$wheel" | cut -f1) $wheel and $(du -h "$sdist" | cut -f1) $sdist" >&2

# 2. a fresh venv with the wheel and ONNX Runtime for CPU
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check "$wheel[cpu]" -c requirements-cpu.txt

# 3. from outside the checkout: the installed package, its packaged model, the CLI and the API
outside="$(mktemp -d "${TMPDIR:-/tmp}/hieseg-wheel-check.XXXXXX")"
trap 'rm -rf "$outside"' EXIT
cd "$outside"
env -u HIESEG_MODEL_DIR -u PYTHONPATH "$repo/$work/venv/bin/hieseg" predict "$repo/test/input" cli-out -q
env -u HIESEG_MODEL_DIR -u PYTHONPATH "$repo/$work/venv/bin/python" - "$repo" <<'PY'
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import hieseg
from hieseg.engine.manifest import BUNDLED_MODEL_DIR

repo = Path(sys.argv[1])
site = Path(hieseg.__file__).resolve().parent
assert site != repo / "hieseg" and "site-packages" in site.parts, f"hieseg imported from {site}, not the wheel"
assert BUNDLED_MODEL_DIR == site / "model", f"the model is not the packaged one: {BUNDLED_MODEL_DIR}"
inp = repo / "test/input/images"
adc = next((inp / "skull-stripped-adc-brain-mri").glob("*.mha"))
zadc = next((inp / "z-score-adc").glob("*.mha"))
mask, report = hieseg.segment(adc, zadc)
cli = sitk.ReadImage("cli-out/images/hie-lesion-segmentation/overlay.mha")
assert np.array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(cli)), "API and CLI masks differ"
checkout = repo / "out/sample/images/hie-lesion-segmentation/overlay.mha"
same = "not compared (no out/sample)"
if checkout.is_file():
    assert np.array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(sitk.ReadImage(str(checkout)))), \
        "the installed wheel's mask differs from the checkout's"
    same = "voxel-identical to the checkout's out/sample"
print(f"check_wheel.sh: installed hieseg {hieseg.__version__} from {site}; model {report['model']['name']} "
      f"{report['model']['version']} (manifest sha256 {report['model']['manifest_sha256'][:12]}) packaged; "
      f"sample lesion {report['lesion_volume_ml']:.3f} mL; API == CLI; {same}", file=sys.stderr)
PY
echo "check_wheel.sh: PASS" >&2
