"""Cohort runs: a CSV list of cases, SLURM array shards, and resuming an interrupted run (``--continue``)."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

from .cases import Case
from .errors import InputError
from .outputs import CaseOutputs, mask_stem

log = logging.getLogger(__name__)

CASE_LIST_COLUMNS = ("case_id", "adc", "zadc")
_SAFE_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def is_case_list(path: Path) -> bool:
    return path.suffix.lower() == ".csv" and path.is_file()


def read_case_list(path: str | Path) -> list[Case]:
    """Cases of a CSV with the header ``case_id,adc,zadc``; relative image paths are relative to the CSV's folder.

    Each case's outputs are named by its case_id, so ids must be unique and usable as file names.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's byte-order mark
            reader = csv.DictReader(fh)
            header = [name.strip() for name in reader.fieldnames or []]
            reader.fieldnames = header
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"cannot read the case list ({exc})") from None
    missing = [c for c in CASE_LIST_COLUMNS if c not in header]
    if missing:
        raise InputError(path, f"case list needs the columns {','.join(CASE_LIST_COLUMNS)}; missing "
                               + ", ".join(missing))
    cases, seen = [], set()
    for line, row in enumerate(rows, start=2):
        values = {c: (row.get(c) or "").strip() for c in CASE_LIST_COLUMNS}
        empty = [c for c, v in values.items() if not v]
        if empty:
            raise InputError(path, f"line {line}: empty {', '.join(empty)}")
        case_id = values["case_id"]
        if not _SAFE_CASE_ID.fullmatch(case_id):
            raise InputError(path, f"line {line}: case_id {case_id!r} is not a usable file name "
                                   "(letters, digits, '.', '_', '-')")
        if case_id in seen:
            raise InputError(path, f"line {line}: case_id {case_id!r} appears twice")
        seen.add(case_id)
        adc, zadc = (_resolve(values[c], path.parent) for c in ("adc", "zadc"))
        cases.append(Case(case_id, adc, zadc, mask_stem(case_id)))
    if not cases:
        raise InputError(path, "case list has no cases")
    return cases


def _resolve(value: str, folder: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else folder / p


def resolve_shard(spec: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """``K/N`` as given, or for ``auto`` from the SLURM array variables of this task.

    SLURM numbers array tasks from ``SLURM_ARRAY_TASK_MIN`` (0 or 1 or any start, with an optional step), so the
    shard is the task's position in the array: K = (ID - MIN) / STEP + 1, N = SLURM_ARRAY_TASK_COUNT.
    """
    if not spec or spec.strip().lower() != "auto":
        return spec
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")
    absent = [n for n in names if not environ.get(n)]
    if absent:
        raise InputError(None, f"--shard auto: {' and '.join(absent)} not set (not inside a SLURM array job?); "
                               "give --shard K/N")
    try:
        task, count = int(environ["SLURM_ARRAY_TASK_ID"]), int(environ["SLURM_ARRAY_TASK_COUNT"])
        first = int(environ.get("SLURM_ARRAY_TASK_MIN", "0") or 0)
        step = int(environ.get("SLURM_ARRAY_TASK_STEP", "1") or 1)
    except ValueError:
        raise InputError(None, "--shard auto: the SLURM_ARRAY_TASK_* variables are not integers") from None
    index, remainder = divmod(task - first, step)
    if remainder or not 0 <= index < count:
        raise InputError(None, f"--shard auto: task {task} is not in an array of {count} task(s) starting at "
                               f"{first} with step {step}")
    return f"{index + 1}/{count}"


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
