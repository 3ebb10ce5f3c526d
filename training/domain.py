"""The training domain written into the manifest: what the networks have seen (spacing, grid, intensities).

The runtime's domain guard (``hieseg/domain.py``) resamples inputs outside these ranges and refuses intensities
that cannot be in the expected units. ``hieseg.inputs.domain.DEFAULT_DOMAIN`` is this function's output on the 40
training cases, for manifests written before the field existed; regenerate it with

    PYTHONPATH=. training/.venv/bin/python -m training.domain     # prints the JSON
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Protocol

import numpy as np


class _Case(Protocol):  # training.data.RawCase, or anything with these fields
    adc: np.ndarray
    zadc: np.ndarray
    spacing_zyx: tuple[float, float, float]


def _range(values: Iterable[float], digits: int) -> list[float]:
    values = list(values)
    return [round(float(min(values)), digits), round(float(max(values)), digits)]


def training_domain(cases: Iterable[_Case]) -> dict[str, Any]:
    """Per-axis spacing and grid-size ranges and per-source brain intensity ranges over ``cases``.

    Intensities are summarised per case inside the brain (ADC > 0) by the median and the 1st / 99th percentiles,
    so one outlier voxel neither widens nor narrows the domain; the ranges are over cases.
    """
    cases = list(cases)
    if not cases:
        raise ValueError("no cases to compute a training domain from")
    spacings = np.array([c.spacing_zyx for c in cases], dtype=np.float64)
    sizes = np.array([c.adc.shape for c in cases], dtype=np.int64)
    stats: dict[str, dict[str, list[float]]] = {}
    for source in ("adc", "zadc"):
        per_case = []
        for c in cases:
            values = getattr(c, source)[c.adc > 0]
            per_case.append(np.percentile(values, [1, 50, 99]))
        per_case = np.array(per_case)
        stats[source] = {"brain_p01": _range(per_case[:, 0], 3), "brain_median": _range(per_case[:, 1], 3),
                         "brain_p99": _range(per_case[:, 2], 3)}
    return {
        "n_cases": len(cases),
        "spacing_zyx_mm": {"min": [round(float(v), 4) for v in spacings.min(0)],
                           "max": [round(float(v), 4) for v in spacings.max(0)]},
        "size_zyx": {"min": [int(v) for v in sizes.min(0)], "max": [int(v) for v in sizes.max(0)]},
        "intensity": stats,
    }


def main() -> None:
    from training.data import ensure_data, load_cases

    print(json.dumps(training_domain(load_cases(ensure_data()).values()), indent=1))


if __name__ == "__main__":
    main()
