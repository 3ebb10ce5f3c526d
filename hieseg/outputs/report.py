"""What a case's result means clinically: volumes, burden class, components; and the multi-case summary CSV."""

from __future__ import annotations

import csv
import io as _io
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from hieseg.engine.postprocess import component_sizes
from hieseg.inputs.io import write_text
from hieseg.lesions import burden_class


def lesion_statistics(mask: np.ndarray, brain: np.ndarray, spacing_zyx: Sequence[float]) -> dict[str, Any]:
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    lesion_ml = float(mask.sum()) * voxel_ml
    brain_ml = float(brain.sum()) * voxel_ml
    percent = 100.0 * lesion_ml / brain_ml if brain_ml else 0.0
    sizes = component_sizes(mask)
    return {
        "lesion_volume_ml": round(lesion_ml, 4),
        "brain_volume_ml": round(brain_ml, 3),
        "lesion_percent_of_brain": round(percent, 4),
        "burden_class": burden_class(percent),
        "lesion_components": int(len(sizes) - 1),
        "largest_component_ml": round(float(sizes[1:].max(initial=0)) * voxel_ml, 4),
    }


SUMMARY_COLUMNS = ("case_id", "status", "lesion_volume_ml", "brain_volume_ml", "lesion_percent_of_brain",
                   "burden_class", "lesion_components", "largest_component_ml", "providers", "seconds_total",
                   "output", "error")


def write_summary_csv(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return write_text(buffer.getvalue(), path)
