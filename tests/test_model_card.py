"""MODEL_CARD.md generated from the manifest (numbers from the file, never typed), and the export's clean-tree gate."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import pytest

from training.model_card import render_model_card, write_model_card
from training.provenance import DirtyTreeError, check_clean_tree

REPO = Path(__file__).resolve().parents[1]
MANIFEST = json.loads((REPO / "model/manifest.json").read_text()) if (REPO / "model/manifest.json").is_file() \
    else None


@pytest.fixture()
def manifest():
    if MANIFEST is None:
        pytest.skip("no trained model in model/")
    return copy.deepcopy(MANIFEST)


def _rows(card: str) -> dict[tuple[str, str], list[str]]:
    rows = {}
    for line in card.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and re.fullmatch(r"\d+", cells[2]):
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def test_scores_in_the_card_are_the_manifests(manifest, tmp_path):
    path = write_model_card(manifest, None, tmp_path / "MODEL_CARD.md", "ab" * 32)
    card = path.read_text()
    rows = _rows(card)
    ens = manifest["provenance"]["cv_scores"]["ensemble"]
    assert rows[("ensemble", "all")] == [str(ens["overall"]["n"]), f"{ens['overall']['dice']:.3f}",
                                         f"{ens['overall']['masd']:.2f}", f"{ens['overall']['nsd']:.3f}"]
    for stratum, s in ens["per_stratum"].items():
        if s["n"]:
            assert rows[("ensemble", stratum)][:2] == [str(s["n"]), f"{s['dice']:.3f}"]
    assert f"`{'ab' * 32}`" in card
    for member in manifest["members"]:
        assert f"| {member['name']} | {member['kind']} |" in card and member["sha256"][:12] in card
    for heading in ("## Intended use", "## Licence and citation", "## Inputs it expects", "## Known failure modes",
                    "## Never tested on", "## Training data and provenance"):
        assert heading in card
    assert "not a medical device" in card and "Not for clinical decisions" in card
    assert "CC BY 4.0" in card and "10.1038/s41597-024-03986-7" in card
    if manifest["provenance"]["training"].get("dirty_training"):
        assert "uncommitted changes" in card


def test_manifest_fields_and_tuning_with_nested_scores_are_used(manifest):
    manifest.update(license="Apache-2.0 (weights too)", intended_use="Only for the BONBID-HIE challenge.",
                    references=["Some reference, 2026"])
    nested = {"ensemble": {"overall": {"n": 40, "dice": 0.61234, "masd": 4.9, "nsd": 0.74},
                           "per_stratum": {"<1%": {"n": 23, "dice": 0.5, "masd": 7.0, "nsd": 0.7}}}}
    tuning = {"scores": manifest["provenance"]["cv_scores"] | {}, "nested": nested}
    tuning["scores"].pop("note")
    card = render_model_card(manifest, tuning)
    assert "Only for the BONBID-HIE challenge." in card and "Apache-2.0 (weights too)" in card
    assert "- Some reference, 2026" in card
    assert "### Nested" in card and "| ensemble | all | 40 | 0.612 | 4.90 | 0.740 |" in card


def test_committed_model_card_is_current(manifest):
    """MODEL_CARD.md in the repository is what the generator makes of the committed manifest."""
    import hashlib

    sha = hashlib.sha256((REPO / "model/manifest.json").read_bytes()).hexdigest()
    assert (REPO / "MODEL_CARD.md").read_text() == render_model_card(manifest, None, sha)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_export_refuses_a_dirty_tree_unless_allowed(tmp_path):
    repo = tmp_path / "repo"
    for rel in ("training/train.py", "hieseg/io.py", "training/RESULTS.md", "README.md"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("x\n")
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = check_clean_tree(False, repo)
    assert clean["dirty"] is False and len(clean["commit"]) == 40 and clean["allow_dirty"] is False
    (repo / "training/RESULTS.md").write_text("regenerated\n")  # written by the pipeline itself: not dirt
    (repo / "README.md").write_text("docs\n")  # outside training/ and hieseg/
    assert check_clean_tree(False, repo)["dirty"] is False
    (repo / "hieseg/io.py").write_text("changed\n")
    (repo / "training/new_idea.py").write_text("untracked\n")
    with pytest.raises(DirtyTreeError,
                       match=r"uncommitted changes .*hieseg/io.py, training/new_idea.py.*--allow-dirty"):
        check_clean_tree(False, repo)
    record = check_clean_tree(True, repo)
    assert record["dirty"] is True and record["allow_dirty"] is True
    assert record["dirty_paths"] == ["hieseg/io.py", "training/new_idea.py"]
