"""The classic reference segmentation: Z-ADC below -2 inside the brain.

``hieseg baseline INPUT OUTPUT`` writes it for every case of a supported input layout, named like hieseg's
predictions, so that any comparison can have the reference beside it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from hieseg.engine.preprocess import brain_mask
from hieseg.errors import HiesegError, InputError
from hieseg.inputs.cases import Case, find_cases
from hieseg.inputs.io import read_image, write_mask
from hieseg.outputs.paths import case_outputs

log = logging.getLogger(__name__)

ZADC_THRESHOLD = -2.0


def baseline_mask(adc: np.ndarray, zadc: np.ndarray) -> np.ndarray:
    """Voxels with Z-ADC < -2 inside the brain (ADC > 0), as a bool (z, y, x) array."""
    adc, zadc = np.asarray(adc), np.asarray(zadc)
    if adc.shape != zadc.shape:
        raise ValueError(f"ADC and Z-ADC shapes differ: {adc.shape} vs {zadc.shape}")
    return (zadc < ZADC_THRESHOLD) & brain_mask(adc)


def baseline_case(case: Case, output: Path) -> Path:
    """Read one case, write its baseline mask on the ADC's grid where hieseg's mask of that case goes, and return
    the written path."""
    adc, adc_geometry = read_image(case.adc)
    zadc, zadc_geometry = read_image(case.zadc)
    if adc.shape != zadc.shape:
        raise InputError(case.zadc, f"Z-ADC grid {zadc_geometry.size} does not match the ADC's {adc_geometry.size}")
    diffs = adc_geometry.differences(zadc_geometry)
    if diffs:
        log.warning("%s: ADC and Z-ADC geometries differ (%s); writing on the ADC's grid", case.case_id,
                    "; ".join(diffs))
    return write_mask(baseline_mask(adc, zadc), adc_geometry, case_outputs(case, output).mask)


def run_baseline(input_dir: str | Path, output_dir: str | Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Write baseline masks for all cases under ``input_dir``; returns (written paths, [(case id, error)])."""
    from hieseg.outputs.progress import progress

    cases = find_cases(input_dir)
    output = Path(output_dir)
    written, failed = [], []
    for case in progress(cases, total=len(cases), desc="baseline"):
        try:
            written.append(baseline_case(case, output))
        except (HiesegError, ValueError) as exc:
            log.error("%s: %s", case.case_id, exc)
            failed.append((case.case_id, str(exc)))
    return written, failed


def register(subparsers) -> None:
    """Add ``baseline INPUT OUTPUT`` to the hieseg command line."""
    parser = subparsers.add_parser(
        "baseline",
        help="write the Z-ADC < -2 (inside the brain) reference masks",
        description="Write the classic reference segmentation, Z-ADC < -2 inside the brain (ADC > 0), for every "
                    "case in INPUT (Grand Challenge or BONBID layout), named like hieseg's predictions.",
    )
    parser.add_argument("input", type=Path, metavar="INPUT", help="input folder (Grand Challenge or BONBID layout)")
    parser.add_argument("output", type=Path, metavar="OUTPUT", help="output folder")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log detail")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    written, failed = run_baseline(args.input, args.output)
    for path in written:
        print(path)
    if failed:
        log.error("%d of %d cases failed: %s", len(failed), len(failed) + len(written),
                  ", ".join(case_id for case_id, _ in failed))
        return 1
    return 0
