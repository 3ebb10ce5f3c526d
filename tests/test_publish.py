"""training/publish.py: a model folder is replaced atomically, so an export that fails at any stage leaves the old
complete model (loadable, checksums intact) and never a half-written one. Torch-free: runs without training/.venv."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from hieseg.engine.manifest import load_manifest
from training import publish


def _stage_new_model(toy_model: Path, target: Path) -> Path:
    """A complete new model in the staging folder: the toy model with another version string."""
    staged = publish.staging_dir(target)
    for f in toy_model.iterdir():
        shutil.copy2(f, staged / f.name)
    raw = json.loads((staged / "manifest.json").read_text())
    raw["version"] = "new"
    (staged / "manifest.json").write_text(json.dumps(raw))
    return staged


@pytest.fixture()
def old_model(tmp_path, toy_model) -> Path:
    target = tmp_path / "model"
    shutil.copytree(toy_model, target)
    return target


def _assert_old_intact(target: Path) -> None:
    manifest = load_manifest(target)  # verifies every member's sha256
    assert manifest.version == "test"


def test_publish_swaps_in_the_new_model_and_leaves_nothing_beside_it(old_model, toy_model):
    staged = _stage_new_model(toy_model, old_model)
    publish.publish_model_dir(staged, old_model)
    assert load_manifest(old_model).version == "new"
    assert sorted(p.name for p in old_model.parent.iterdir()) == ["model"]


def test_publish_into_a_missing_folder(tmp_path, toy_model):
    target = tmp_path / "model"
    publish.publish_model_dir(_stage_new_model(toy_model, target), target)
    assert load_manifest(target).version == "new"


@pytest.mark.parametrize("stage", ["_fsync_tree", "_exchange"])
def test_failure_before_the_swap_leaves_the_old_model(old_model, toy_model, monkeypatch, stage):
    staged = _stage_new_model(toy_model, old_model)

    def boom(*a, **k):
        raise OSError(f"injected failure in {stage}")

    monkeypatch.setattr(publish, stage, boom)
    with pytest.raises(OSError, match="injected"):
        publish.publish_model_dir(staged, old_model)
    _assert_old_intact(old_model)


def test_fallback_rename_failure_puts_the_old_model_back(old_model, toy_model, monkeypatch):
    """Without RENAME_EXCHANGE: the second rename (staged -> model) fails after the old one moved aside."""
    staged = _stage_new_model(toy_model, old_model)
    monkeypatch.setattr(publish, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def rename(src, dst):
        if Path(src) == staged:
            raise OSError("injected failure: staged -> model")
        real_rename(src, dst)

    monkeypatch.setattr(publish.os, "rename", rename)
    with pytest.raises(OSError, match="injected"):
        publish.publish_model_dir(staged, old_model)
    monkeypatch.setattr(publish.os, "rename", real_rename)
    _assert_old_intact(old_model)


def test_fallback_swap_without_exchange(old_model, toy_model, monkeypatch):
    monkeypatch.setattr(publish, "_exchange", lambda a, b: False)
    publish.publish_model_dir(_stage_new_model(toy_model, old_model), old_model)
    assert load_manifest(old_model).version == "new"
    assert sorted(p.name for p in old_model.parent.iterdir()) == ["model"]


def test_recover_restores_a_model_moved_aside_by_a_crash(old_model, toy_model):
    """A process killed between the fallback's two renames: model.old-<pid> holds the old model, model is gone."""
    staged = _stage_new_model(toy_model, old_model)
    os.rename(old_model, old_model.parent / "model.old-12345")
    publish.recover_model_dir(old_model)
    _assert_old_intact(old_model)
    assert not staged.exists() and sorted(p.name for p in old_model.parent.iterdir()) == ["model"]


def test_staging_must_be_a_sibling(tmp_path, old_model):
    (tmp_path / "elsewhere/new").mkdir(parents=True)
    with pytest.raises(ValueError, match="sibling"):
        publish.publish_model_dir(tmp_path / "elsewhere/new", old_model)
    _assert_old_intact(old_model)
