"""pip-installable: extras, Python floor, the shipped model as package data, found by default outside the checkout.

scripts/check_wheel.sh (a CI step) builds the real wheel and sdist, installs the wheel with [cpu] into a fresh venv
and segments the sample case from outside the checkout; the last test here checks those built files when present.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from casefiles import write_gc_case

import hieseg

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
MODEL_BUDGET = 40 * 2**20


def test_each_extra_installs_exactly_one_onnxruntime_wheel():
    """onnxruntime and onnxruntime-gpu install the same module: an environment must never get both."""
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    wheels = {name: [d for d in deps if d.startswith("onnxruntime")] for name, deps in extras.items()}
    assert [re.split(r"[<>=]", d)[0] for d in wheels["cpu"]] == ["onnxruntime"]
    assert [re.split(r"[<>=]", d)[0] for d in wheels["gpu"]] == ["onnxruntime-gpu"]
    assert not any(d.startswith("onnxruntime") for d in project["dependencies"])


def test_model_folder_is_mapped_into_the_package():
    tool = PYPROJECT["tool"]["setuptools"]
    assert tool["package-dir"]["hieseg.model"] == "model"  # mapped at build time, not duplicated in git
    assert "hieseg.model" in tool["packages"]
    assert set(tool["package-data"]["hieseg.model"]) == {"manifest.json", "*.onnx"}
    assert not (REPO / "hieseg" / "model").exists()


def _installed_layout(site: Path, model: Path) -> Path:
    """What the wheel installs: hieseg/ with the model's manifest and ONNX files in hieseg/model/."""
    shutil.copytree(REPO / "hieseg", site / "hieseg", ignore=shutil.ignore_patterns("__pycache__"))
    (site / "hieseg/model").mkdir()
    for f in model.iterdir():
        if f.name == "manifest.json" or f.suffix == ".onnx":
            shutil.copy(f, site / "hieseg/model" / f.name)
    return site


def test_installed_package_finds_its_packaged_model_from_anywhere(tmp_path, toy_model_3d):
    """Outside the checkout, with no --model and no $HIESEG_MODEL_DIR: the model inside the package is used."""
    site = _installed_layout(tmp_path / "site", toy_model_3d)
    case = write_gc_case(tmp_path / "case")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("HIESEG_MODEL_DIR", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    code = (
        "import sys, hieseg\n"
        "from hieseg.engine.manifest import BUNDLED_MODEL_DIR\n"
        f"m, r = hieseg.segment({str(case / 'images/skull-stripped-adc-brain-mri/case.mha')!r}, "
        f"{str(case / 'images/z-score-adc/case.mha')!r})\n"
        "print(hieseg.__file__, BUNDLED_MODEL_DIR, r['model']['members'])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    module, model_dir, members = proc.stdout.split(maxsplit=2)
    assert Path(module).parent == site / "hieseg" and Path(model_dir) == site / "hieseg/model"
    assert members.strip() == "['toy3d']"
    cli = subprocess.run([sys.executable, "-m", "hieseg", "predict", str(case), "out", "-q"], cwd=elsewhere,
                         env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert (elsewhere / "out/images/hie-lesion-segmentation/overlay.mha").is_file()


def _built(kind: str) -> Path:
    path = REPO / "dist" / (f"hieseg-{hieseg.__version__}-py3-none-any.whl" if kind == "wheel"
                            else f"hieseg-{hieseg.__version__}.tar.gz")
    if not path.is_file():
        pytest.skip(f"{path.name} not built (scripts/check_wheel.sh builds it)")
    return path


def test_built_wheel_carries_the_shipped_model_and_the_extras():
    manifest = json.loads((REPO / "model/manifest.json").read_text())
    with zipfile.ZipFile(_built("wheel")) as whl:
        names = set(whl.namelist())
        packaged = json.loads(whl.read("hieseg/model/manifest.json"))
        assert packaged == manifest
        size = 0
        for member in manifest["members"]:
            data = whl.read(f"hieseg/model/{member['file']}")
            assert hashlib.sha256(data).hexdigest() == member["sha256"], member["file"]
            size += len(data)
        assert size <= MODEL_BUDGET
        metadata = whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Requires-Python: >=3.11" in metadata
    assert "Provides-Extra: cpu" in metadata and "Provides-Extra: gpu" in metadata
    assert not any(n.startswith(("tests/", "training/", "model/")) for n in names)
    for layer in ("inputs", "engine", "outputs", "app", "evaluation"):  # every subpackage is in the wheel
        assert f"hieseg/{layer}/__init__.py" in names, layer
    assert "hieseg/engine/manifest.schema.json" in names  # the manifest is validated against it on load
    with tarfile.open(_built("sdist")) as sdist:
        files = {Path(*Path(n).parts[1:]).as_posix() for n in sdist.getnames()}
    assert {"model/manifest.json", "LICENSE", "pyproject.toml", "hieseg/app/api.py"} <= files
    assert {f"model/{m['file']}" for m in manifest["members"]} <= files
