"""One rounding for every figure the training writes (tuning record, manifest provenance): RESULTS.md, the model
card and the README format the same stored numbers, so they can never disagree in the last digit."""

from __future__ import annotations

from typing import Any


def rounded(obj: Any, nd: int = 4) -> Any:
    """Floats to ``nd`` decimals (three significant digits below 1e-3; NaN -> None), through dicts and lists."""
    if isinstance(obj, float):
        if obj != obj:
            return None
        return float(f"{obj:.3g}") if 0 < abs(obj) < 1e-3 else round(obj, nd)
    if isinstance(obj, dict):
        return {k: rounded(v, nd) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, nd) for v in obj]
    return obj
