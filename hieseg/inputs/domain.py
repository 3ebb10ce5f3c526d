"""The domain guard: inputs are compared with what the networks were trained on before they run.

- Spacing beyond the training range (per axis) is not refused: every member runs at the nearest in-domain spacing
  and its probabilities are restored to the native grid, so run time and memory stay bounded for e.g. a 0.5 mm
  512 x 512 x 300 volume (a 2D member would otherwise run at 0.5 mm in-plane, on 300 slices).
- Intensities that cannot be in the expected units (an ADC in 10^-6 mm^2/s, a Z-ADC z-score) are refused, because
  no sensible mask can come of them: a uint8-rescaled ADC gives an empty mask with exit 0 otherwise.
- Milder departures (a grid larger than the training ones, intensities a little outside the training cases, a
  Z-ADC of whole numbers) are warnings, written to the log and to the report's ``domain`` field.

The domain comes from the manifest's ``domain`` field (``training/domain.py`` writes it); manifests written before
that field existed get ``DEFAULT_DOMAIN``, the same function's output on the 40 training cases.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hieseg.errors import InputError

log = logging.getLogger(__name__)

# training.domain.training_domain on the 40 BONBID-HIE 2023 training cases; regenerate with
#   PYTHONPATH=. training/.venv/bin/python -m training.domain
DEFAULT_DOMAIN: dict[str, Any] = {
    "n_cases": 40,
    "spacing_zyx_mm": {"min": [2.0, 1.25, 1.25], "max": [6.0, 2.0, 2.0]},
    "size_zyx": {"min": [16, 128, 128], "max": [60, 160, 160]},
    "intensity": {
        "adc": {"brain_p01": [472.0, 1203.0], "brain_median": [872.0, 1623.0], "brain_p99": [2343.52, 3514.18]},
        "zadc": {"brain_p01": [-8.198, -0.759], "brain_median": [-2.92, 1.8], "brain_p99": [1.173, 10.0]},
    },
}

# Refusal bounds. An ADC brain median more than this factor outside the training cases' range is not in
# 10^-6 mm^2/s (uint8 rescaling gives < 255, mm^2/s gives ~0.001, 10^-3 mm^2/s gives ~1); a Z-ADC whose brain
# median lies beyond +-10 (the training maps are clipped to +-10) is not a z-score map.
ADC_UNITS_FACTOR = 4.0
ZADC_MAX_ABS_MEDIAN = 10.0
# Brain intensity statistics read at most this many voxels (evenly strided): a percentile is stable long before.
_SAMPLE = 1_000_000


@dataclass(frozen=True)
class Domain:
    """Ranges of the training cases: spacing and grid size per (z, y, x) axis, brain intensities per source."""

    spacing_min_zyx: tuple[float, float, float]
    spacing_max_zyx: tuple[float, float, float]
    size_min_zyx: tuple[int, int, int]
    size_max_zyx: tuple[int, int, int]
    intensity: Mapping[str, Mapping[str, tuple[float, float]]]
    origin: str = "manifest"

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], origin: str = "manifest") -> "Domain":
        """Parse the manifest's ``domain`` field; raises ValueError (with the key) when it is malformed."""
        try:
            spacing, size = raw["spacing_zyx_mm"], raw["size_zyx"]
            intensity = {src: {k: (float(v[0]), float(v[1])) for k, v in stats.items()}
                         for src, stats in raw.get("intensity", {}).items()}
            domain = cls(tuple(float(v) for v in spacing["min"]), tuple(float(v) for v in spacing["max"]),
                         tuple(int(v) for v in size["min"]), tuple(int(v) for v in size["max"]),
                         intensity, origin)
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise ValueError(f"domain: malformed ({type(exc).__name__}: {exc})") from None
        if not (len(domain.spacing_min_zyx) == len(domain.spacing_max_zyx) == 3
                and all(0 < lo <= hi for lo, hi in zip(domain.spacing_min_zyx, domain.spacing_max_zyx))):
            raise ValueError("domain: spacing_zyx_mm needs 3 positive min <= max values")
        return domain


def default_domain() -> Domain:
    return Domain.from_json(DEFAULT_DOMAIN, origin="default (40 BONBID-HIE training cases)")


@dataclass
class DomainCheck:
    """What the guard found for one case and the spacing every member runs at."""

    notes: list[str] = field(default_factory=list)  # out-of-range findings, in words
    run_spacing_zyx: tuple[float | None, float | None, float | None] = (None, None, None)  # None: native

    @property
    def resampled(self) -> bool:
        return any(s is not None for s in self.run_spacing_zyx)

    def to_json(self) -> dict[str, Any]:
        return {"in_domain": not self.notes, "out_of_range": list(self.notes),
                "run_spacing_zyx": list(self.run_spacing_zyx) if self.resampled else None}


def plan_spacing(spacing_zyx: Sequence[float], domain: Domain) -> tuple[tuple[float | None, ...], list[str]]:
    """Per axis, the nearest in-domain spacing where the native one is outside the training range (else None)."""
    run, notes = [], []
    for axis, s, lo, hi in zip("zyx", spacing_zyx, domain.spacing_min_zyx, domain.spacing_max_zyx):
        nearest = min(max(float(s), lo), hi)
        if np.isclose(nearest, s, rtol=1e-3, atol=0):
            run.append(None)
        else:
            run.append(nearest)
            notes.append(f"spacing {axis} {s:g} mm outside the training range {lo:g}-{hi:g} mm")
    return tuple(run), notes


def member_spacing(target_zyx: Sequence[float | None], run_zyx: Sequence[float | None]) -> tuple[float | None, ...]:
    """A member's target spacing with the guard's spacing on the axes the member would take natively."""
    return tuple(t if t is not None else r for t, r in zip(target_zyx, run_zyx))


def size_notes(shape_zyx: Sequence[int], domain: Domain) -> list[str]:
    """Grid sizes above the training range (a smaller grid is harmless: the networks see the brain's crop)."""
    notes = []
    for axis, n, lo, hi in zip("zyx", shape_zyx, domain.size_min_zyx, domain.size_max_zyx):
        if n > hi:
            notes.append(f"grid size {axis} {n} above the training range {lo}-{hi}")
    return notes


def brain_sample(values: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Up to ``_SAMPLE`` brain voxels, evenly strided (deterministic)."""
    inside = values[brain]
    step = max(1, inside.size // _SAMPLE)
    return inside[::step]


def check_adc_units(adc_brain: np.ndarray, path: Path, domain: Domain) -> list[str]:
    """Refuse an ADC whose brain median cannot be in 10^-6 mm^2/s; note one outside the training range."""
    median = float(np.median(adc_brain))
    lo, hi = domain.intensity.get("adc", {}).get("brain_median", (872.0, 1623.0))
    if not lo / ADC_UNITS_FACTOR <= median <= hi * ADC_UNITS_FACTOR:
        raise InputError(path, f"ADC brain median {median:.4g} is implausible for units of 10^-6 mm^2/s (training "
                               f"cases: {lo:g}-{hi:g}); the map looks rescaled (e.g. to uint8 0-255) or in other "
                               f"units: give the ADC in 10^-6 mm^2/s")
    if not lo <= median <= hi:
        return [f"ADC brain median {median:.4g} outside the training range {lo:g}-{hi:g}"]
    return []


def check_zadc_values(zadc_brain: np.ndarray, path: Path, domain: Domain) -> list[str]:
    """Refuse a Z-ADC that is not a z-score map; note one of whole numbers or outside the training range."""
    median = float(np.median(zadc_brain))
    if abs(median) > ZADC_MAX_ABS_MEDIAN:
        raise InputError(path, f"Z-ADC brain median {median:.4g} is implausible for a z-score map (training "
                               f"cases lie within +-10); the map looks rescaled (e.g. to uint8 0-255)")
    notes = []
    if zadc_brain.size and np.all(zadc_brain == np.round(zadc_brain)) and np.any(zadc_brain != 0):
        notes.append("Z-ADC holds only whole numbers (stored as an integer type?): the fractions of the z-scores "
                     "are lost and the mask can differ from one on the original map")
    lo, hi = domain.intensity.get("zadc", {}).get("brain_median", (-2.92, 1.8))
    if not lo <= median <= hi:
        notes.append(f"Z-ADC brain median {median:.3g} outside the training range {lo:g}-{hi:g}")
    return notes


def check_case(adc: np.ndarray, zadc: np.ndarray, spacing_zyx: Sequence[float], domain: Domain,
               adc_path: Path | str = "ADC", zadc_path: Path | str = "Z-ADC") -> DomainCheck:
    """The guard for one validated pair: refuses (InputError) or returns the notes and the spacing to run at."""
    brain = adc > 0
    notes = check_adc_units(brain_sample(adc, brain), Path(adc_path), domain)
    notes += check_zadc_values(brain_sample(zadc, brain), Path(zadc_path), domain)
    run_spacing, spacing_notes = plan_spacing(spacing_zyx, domain)
    notes = spacing_notes + size_notes(adc.shape, domain) + notes
    return DomainCheck(notes, run_spacing)  # type: ignore[arg-type]


def log_check(case_id: str, check: DomainCheck) -> None:
    """One warning per case outside the domain, saying what was out of range and what was done about it."""
    if not check.notes:
        return
    resampled = ", ".join(f"{axis} {s:g} mm" for axis, s in zip("zyx", check.run_spacing_zyx) if s is not None)
    action = (f"; every member runs at {resampled} (other axes native) and its result is restored to the native "
              "grid" if resampled else "")
    log.warning("%s: outside the training domain: %s%s", case_id, "; ".join(check.notes), action)
