from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))

from toy_models import write_toy_model  # noqa: E402


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory) -> Path:
    """A 3D + 2D toy ensemble whose mask is the Z-ADC < -2 baseline (see toy_models.py)."""
    return write_toy_model(tmp_path_factory.mktemp("toy_model"))


@pytest.fixture(scope="session")
def toy_model_3d(tmp_path_factory) -> Path:
    """Only the native-spacing 3D toy member: its mask equals Z-ADC < -2 inside the brain exactly."""
    return write_toy_model(tmp_path_factory.mktemp("toy_model_3d"), members="3d")


@pytest.fixture(scope="session")
def sample_input() -> Path:
    return REPO / "test" / "input"


@pytest.fixture(scope="session")
def real_predictions(tmp_path_factory, toy_model) -> tuple[Path, Path, Path]:
    """(release root, output folder, model): all 40 real cases through ``hieseg predict`` once with the defaults
    (shipped model, flip TTA), shared by the slow tests that need an uninterrupted run of them."""
    from realdata import real_cases_dir

    from hieseg.app.cli import main
    from hieseg.engine.manifest import BUNDLED_MODEL_DIR

    root = real_cases_dir()
    model = BUNDLED_MODEL_DIR if (BUNDLED_MODEL_DIR / "manifest.json").is_file() else toy_model
    out = tmp_path_factory.mktemp("real_predictions")
    assert main(["predict", str(root), str(out), "--model", str(model), "-q"]) == 0
    return root, out, model
