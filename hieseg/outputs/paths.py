"""Where a run's files go: the one place that decides output paths (nothing is read or written here).

Two layouts:

- Grand Challenge (a case found in its input layout): the mask at the output socket's path, the report, and on
  request the probability map and the QC montage beside it; the names are Grand Challenge's and live in
  ``gc_interface`` (``GC_OUTPUT``, ``GC_REPORT``, ``GC_PROBABILITY``, ``GC_QC``). The challenge reads an .mha
  mask only, so another mask format is refused.
- A folder of many cases: ``OUT/<stem>.<format>`` (named like the dataset's labels, ``mask_stem``),
  ``OUT/reports/<case>.json``, ``OUT/probabilities/<case>_probability.<format>``, ``OUT/qc/<case>.png``, and the
  run's ``OUT/summary.csv`` (``summary_KofN.csv`` for shard K of N).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hieseg.errors import InputError
from hieseg.inputs.gc_interface import (
    GC_OUTPUT,
    GC_OUTPUT_FORMAT,
    GC_PROBABILITY,
    GC_QC,
    GC_REPORT,
)

if TYPE_CHECKING:  # cases.py names its outputs with mask_stem: no import cycle at run time
    from hieseg.inputs.cases import Case

MASK_FORMATS = ("mha", "nii.gz")
REPORTS_DIR = "reports"
PROBABILITIES_DIR = "probabilities"
QC_DIR = "qc"
SUMMARY_NAME = "summary.csv"
SHARD_SUMMARY = re.compile(r"summary_(\d+)of(\d+)\.csv")  # summary_path's name for shard K of N


@dataclass(frozen=True)
class CaseOutputs:
    """The files of one case; ``probability`` and ``qc`` are None when not asked for."""

    mask: Path
    report: Path
    probability: Path | None = None
    qc: Path | None = None

    def files(self) -> list[Path]:
        """Every file of the case, the report last (it is committed last)."""
        return [p for p in (self.mask, self.probability, self.qc, self.report) if p is not None]

    def to_json(self) -> dict[str, str | None]:
        """The report's ``outputs`` entry (what ``--continue`` checks a finished case against)."""
        return {"mask": str(self.mask), "probability": _text(self.probability), "qc": _text(self.qc)}


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def case_outputs(case: Case, out: Path, mask_format: str = "mha", probability: bool = False,
                 qc: bool = False) -> CaseOutputs:
    """The output files of ``case`` under ``out``: the Grand Challenge layout for a case found in that layout,
    else the folder-of-many-cases layout; ``mask_format`` (one of MASK_FORMATS) is the mask's and the probability
    map's format. Raises InputError for a format the layout cannot take."""
    if mask_format not in MASK_FORMATS:
        raise InputError(None, f"--format {mask_format}: expected one of {', '.join(MASK_FORMATS)}")
    if case.grand_challenge:
        if mask_format != GC_OUTPUT_FORMAT:
            raise InputError(None, f"--format {mask_format}: a Grand Challenge input is answered at the output "
                                   f"socket {GC_OUTPUT}, which takes .{GC_OUTPUT_FORMAT} only (leave out --format)")
        return CaseOutputs(out / GC_OUTPUT, out / GC_REPORT, out / GC_PROBABILITY if probability else None,
                           out / GC_QC if qc else None)
    ext = f".{mask_format}"
    return CaseOutputs(out / f"{case.output_stem}{ext}", out / REPORTS_DIR / f"{case.case_id}.json",
                       out / PROBABILITIES_DIR / f"{case.case_id}_probability{ext}" if probability else None,
                       out / QC_DIR / f"{case.case_id}.png" if qc else None)


def summary_path(out: Path, shard: str | None = None) -> Path:
    """The run's summary CSV: ``summary.csv``, or ``summary_KofN.csv`` for shard ``K/N`` (``hieseg merge`` joins
    those)."""
    return out / (f"summary_{shard.replace('/', 'of')}.csv" if shard else SUMMARY_NAME)
