"""training.verify's checks without the OOF recomputation (CI runs that): the committed documents are the
rendering of the committed tuning record and manifest, and a changed figure anywhere in a record is caught."""

import copy
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hieseg.files import file_digest  # noqa: E402
from training import verify as V  # noqa: E402

RECORD = REPO / "training" / "tuning.json"
MANIFEST = REPO / "model" / "manifest.json"


def test_committed_documents_and_manifest_are_the_records_rendering():
    record, manifest = json.loads(RECORD.read_text()), json.loads(MANIFEST.read_text())
    assert V.manifest_differences(manifest, record) == []
    assert V.rendered_differences(manifest, record, file_digest(MANIFEST)) == []


def test_a_changed_figure_is_caught_wherever_it_is():
    record = json.loads(RECORD.read_text())
    assert V.differences(copy.deepcopy(record), record) == []
    headline = copy.deepcopy(record)
    headline["scores"]["nested"]["overall"]["masd"] += 0.01
    assert V.differences(headline, record) == [
        f"scores.nested.overall.masd: regenerated {headline['scores']['nested']['overall']['masd']} vs recorded "
        f"{record['scores']['nested']['overall']['masd']}"]
    case = copy.deepcopy(record)
    case["per_case"][3]["nested"]["dice"] += 0.2  # beyond one voxel's worth
    assert [d.split(":")[0] for d in V.differences(case, record)] == ["per_case[3].nested.dice"]
    choice = copy.deepcopy(record)
    choice["fusion"]["component_filter"] = None
    assert [d.split(":")[0] for d in V.differences(choice, record)] == ["fusion.component_filter"]
    # the manifest must ship the record's choice
    manifest = json.loads(MANIFEST.read_text())
    manifest["fusion"]["threshold"] = 0.3
    assert V.manifest_differences(manifest, record)
