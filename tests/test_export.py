"""export.sh's model tarball in Grand Challenge's /opt/ml/model layout, and build.sh's model-less image and labels."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from casefiles import write_gc_case

from hieseg.app.cli import grand_challenge_main

REPO = Path(__file__).resolve().parents[1]


def _export_model(model: Path, dist: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MODEL_ONLY": "1", "MODEL_DIR": str(model), "DIST": str(dist), "PYTHON": sys.executable}
    return subprocess.run(["bash", str(REPO / "export.sh")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_model_tarball_extracts_to_what_opt_ml_model_needs(tmp_path, toy_model, monkeypatch, capsys):
    proc = _export_model(toy_model, tmp_path / "dist")
    assert proc.returncode == 0, proc.stderr
    tarball = tmp_path / "dist/model.tar.gz"
    assert proc.stdout.strip() == str(tarball)
    with tarfile.open(tarball) as tar:
        names = sorted(n.removeprefix("./") for n in tar.getnames() if n not in (".", "./"))
        assert all(m.uid == 0 and m.mtime == 946684800 for m in tar.getmembers())  # reproducible archive
        tar.extractall(tmp_path / "opt/ml/model", filter="data")
    manifest = json.loads((toy_model / "manifest.json").read_text())
    assert names == sorted(["manifest.json", *(m["file"] for m in manifest["members"])])  # top level, no folder
    # Grand Challenge extracts it to /opt/ml/model; the entry point then uses it without --model
    monkeypatch.setattr("hieseg.engine.manifest.GRAND_CHALLENGE_MODEL_DIR", tmp_path / "opt/ml/model")
    monkeypatch.delenv("HIESEG_MODEL_DIR", raising=False)
    write_gc_case(tmp_path / "in")
    assert grand_challenge_main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "-q"]) == 0
    report = json.loads((tmp_path / "out/hieseg-report.json").read_text())
    assert report["model"]["name"] == "toy" and report["model"]["members"] == ["toy3d", "toy2d"]
    # the same tarball twice is byte-identical
    first = tarball.read_bytes()
    assert _export_model(toy_model, tmp_path / "dist").returncode == 0 and tarball.read_bytes() == first


def test_a_model_that_fails_its_checksums_is_not_exported(tmp_path, toy_model):
    shutil.copytree(toy_model, tmp_path / "m")
    (tmp_path / "m/toy2d.onnx").write_bytes((tmp_path / "m/toy2d.onnx").read_bytes() + b"\0")
    proc = _export_model(tmp_path / "m", tmp_path / "dist")
    assert proc.returncode != 0 and "checksum mismatch" in proc.stderr
    assert not list((tmp_path / "dist").glob("model.tar.gz*"))


@pytest.mark.parametrize("script", ["export.sh", "build.sh", "scripts/check_wheel.sh"])
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(REPO / script)], check=True)
    assert (REPO / script).stat().st_mode & 0o111
