"""Shards of a cohort run: ``K/N`` parsed once, the cases of shard K dealt round-robin, and ``--shard auto`` from a
SLURM array task's variables (the one place for shard logic; the summary file names live in outputs.paths)."""

from __future__ import annotations

import os
import re
from typing import Mapping, Sequence, TypeVar

from hieseg.errors import InputError

T = TypeVar("T")


def parse_shard(spec: str) -> tuple[int, int]:
    """``(K, N)`` of ``'K/N'`` with 1 <= K <= N; ValueError otherwise."""
    match = re.fullmatch(r"(\d+)/(\d+)", spec.strip())
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise ValueError(f"--shard must be K/N with 1 <= K <= N, got {spec!r}")
    return int(match.group(1)), int(match.group(2))


def shard(cases: Sequence[T], spec: str | None) -> list[T]:
    """Cases of shard ``K/N`` (1-based K), dealt round-robin so shards stay balanced over sorted inputs."""
    if not spec:
        return list(cases)
    k, n = parse_shard(spec)
    return list(cases[k - 1 :: n])


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
