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
