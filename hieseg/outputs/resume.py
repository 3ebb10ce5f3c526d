"""Cohort runs: a CSV list of cases, SLURM array shards, and resuming an interrupted run (``--continue``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hieseg.outputs.paths import CaseOutputs

log = logging.getLogger(__name__)

def summary_row(report: dict[str, Any], mask_path: Path) -> dict[str, Any]:
    """The summary.csv row of a finished case (from its report, so a resumed case reads the same as a fresh one)."""
    return {**report, "status": "ok", "output": str(mask_path),
            "providers": ";".join(sorted({m["provider"] for m in report.get("members", [])})),
            "seconds_total": report["seconds"]["total"]}


def completed_report(outputs: CaseOutputs, manifest_sha256: str) -> dict[str, Any] | None:
    """The report of a case whose outputs are all there and complete, else None (the case must run again).

    Complete means: the report parses, it is the final one (a case's files are committed together, the report
    last), it names these output paths, it was made by the same model (manifest sha256), and every output file
    asked for exists.
    """
    if not outputs.report.is_file():
        return None
    try:
        report = json.loads(outputs.report.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(report, dict) or "total" not in (report.get("seconds") or {}):
        return None
    if (report.get("model") or {}).get("manifest_sha256") != manifest_sha256:
        log.info("%s: made by another model; running the case again", outputs.report)
        return None
    written = report.get("outputs") or {}
    for name, wanted in outputs.to_json().items():
        if wanted is not None and (written.get(name) != wanted or not Path(wanted).is_file()):
            return None
    return report
