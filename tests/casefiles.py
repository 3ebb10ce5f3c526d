"""Writing synthetic cases to disk in the layouts hieseg reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hieseg.inputs.gc_interface import GC_ADC_DIR, GC_ZADC_DIR
from hieseg.inputs.io import Geometry, write_image
from hieseg.inputs.phantom import Phantom, make_phantom


def write_gc_case(root: Path, phantom: Phantom | None = None, name: str = "case.mha") -> Path:
    phantom = phantom or make_phantom()
    write_image(phantom.adc, phantom.geometry, root / GC_ADC_DIR / name)
    write_image(phantom.zadc, phantom.geometry, root / GC_ZADC_DIR / name)
    return root


def write_bonbid_case(root: Path, case_number: int, phantom: Phantom | None = None, ext: str = ".mha") -> Path:
    phantom = phantom or make_phantom(seed=case_number)
    cid = f"MGHNICU_{case_number:03d}-VISIT_01"
    write_image(phantom.adc, phantom.geometry, root / "1ADC_ss" / f"{cid}-ADC_ss{ext}")
    write_image(phantom.zadc, phantom.geometry, root / "2Z_ADC" / f"Zmap_{cid}-ADC_smooth2mm_clipped10{ext}")
    write_image(phantom.label.astype(np.uint8), phantom.geometry, root / "3LABEL" / f"{cid}_lesion{ext}")
    return root


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def same_geometry(a: Geometry, b: Geometry) -> bool:
    return a == b
