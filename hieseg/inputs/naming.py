"""The one naming rule for a case's mask in a folder of many cases (CLI runs, case lists, explicit pairs): BONBID's
label naming, so that predictions and the dataset's labels pair by file name."""

from __future__ import annotations

MASK_SUFFIX = "_lesion"


def mask_stem(name: str) -> str:
    """The file stem of a case's mask in a folder of many cases: BONBID's label naming, '<name>_lesion'."""
    return f"{name}{MASK_SUFFIX}"
