"""``hieseg merge``: the shard summaries of an array job (``summary_KofN.csv``) joined into one ``summary.csv``.

Refuses overlaps (a case in two shards, a shard given twice) and gaps (a shard of 1..N missing, shards of
different N, or with ``--expect INPUT`` a case of the input that no shard lists).
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path
from typing import Any, Sequence

from hieseg.errors import InputError
from hieseg.outputs.paths import SHARD_SUMMARY, summary_path
from hieseg.outputs.report import write_summary_csv

log = logging.getLogger(__name__)



def shard_files(paths: Sequence[Path]) -> list[Path]:
    """The summary files: each folder contributes its ``summary_KofN.csv`` files, each file itself."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted((p for p in path.iterdir() if SHARD_SUMMARY.fullmatch(p.name)), key=_shard_key)
            if not found:
                raise InputError(path, "no shard summaries (summary_KofN.csv) in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(path, "not found")
    return files


def _shard_key(path: Path) -> tuple[int, int]:
    match = SHARD_SUMMARY.fullmatch(path.name)
    return (int(match.group(2)), int(match.group(1))) if match else (0, 0)


def check_shard_set(files: Sequence[Path]) -> None:
    """Every shard of 1..N exactly once, all of the same N (for files named summary_KofN.csv)."""
    named = [(f, SHARD_SUMMARY.fullmatch(f.name)) for f in files]
    named = [(f, int(m.group(1)), int(m.group(2))) for f, m in named if m]
    if not named:
        return
    totals = sorted({n for _, _, n in named})
    if len(totals) > 1:
        raise InputError(None, "shard summaries of different splits: " + ", ".join(f"of {n}" for n in totals))
    n = totals[0]
    seen: dict[int, Path] = {}
    for f, k, _ in named:
        if k in seen:
            raise InputError(f, f"shard {k} of {n} given twice (also {seen[k]})")
        seen[k] = f
    missing = [k for k in range(1, n + 1) if k not in seen]
    if missing:
        raise InputError(None, f"gap: shard(s) {', '.join(map(str, missing))} of {n} missing "
                               f"(found {', '.join(str(seen[k]) for k in sorted(seen))})")


def read_summary(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if "case_id" not in (reader.fieldnames or []):
                raise InputError(path, "not a hieseg summary (no case_id column)")
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"cannot read ({exc})") from None


def merge_rows(tables: Sequence[tuple[Path, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """All rows, sorted by case_id; a case listed twice (in one file or two) is an overlap and refused."""
    where: dict[str, Path] = {}
    rows = []
    for path, table in tables:
        for row in table:
            case_id = row["case_id"]
            if case_id in where:
                raise InputError(path, f"overlap: case {case_id} is also in {where[case_id]}")
            where[case_id] = path
            rows.append(row)
    return sorted(rows, key=lambda r: r["case_id"])


def check_expected(rows: Sequence[dict[str, Any]], expected: Sequence[str], source: Path) -> None:
    listed = {r["case_id"] for r in rows}
    missing = [c for c in expected if c not in listed]
    if missing:
        raise InputError(source, f"gap: {len(missing)} case(s) of the input are in no shard summary, e.g. "
                                 + ", ".join(missing[:5]))


def merge_summaries(paths: Sequence[Path], output: Path, expected: Sequence[str] | None = None,
                    expected_from: Path | None = None) -> list[dict[str, Any]]:
    files = shard_files(paths)
    check_shard_set(files)
    if output.resolve() in {f.resolve() for f in files}:
        raise InputError(output, "the merged summary would overwrite one of its inputs")
    rows = merge_rows([(f, read_summary(f)) for f in files])
    if expected is not None:
        check_expected(rows, expected, expected_from or Path("--expect"))
    write_summary_csv(rows, output)
    failed = sum(1 for r in rows if r.get("status") != "ok")
    log.info("merged %d case(s) from %d file(s) into %s: %d ok, %d failed", len(rows), len(files), output,
             len(rows) - failed, failed)
    return rows


def run_merge(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.summaries]
    output = args.output or summary_path(paths[0] if paths[0].is_dir() else paths[0].parent)
    expected = None
    if args.expect is not None:
        from hieseg.inputs.cases import collect_input_cases

        expected = [c.case_id for c in collect_input_cases(args.expect)]
    merge_summaries(paths, output, expected, args.expect)
    print(output)
    return 0


def register(sub) -> None:
    p = sub.add_parser("merge", help="join the shard summaries of an array job into one summary.csv",
                       description="Join summary_KofN.csv files (or the folders holding them) into one CSV, "
                                   "refusing overlaps and gaps.")
    p.add_argument("summaries", nargs="+", metavar="FOLDER_OR_CSV", help="output folder(s) or summary files")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="merged CSV (default: summary.csv in the first folder)")
    p.add_argument("--expect", type=Path, default=None, metavar="INPUT",
                   help="also refuse cases of this input (folder or case list) that no shard lists")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=run_merge)
