"""A dependency-free progress bar on stderr for multi-case runs (a line per item when stderr is not a terminal)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int | None = None, desc: str = "", stream=None) -> Iterator[T]:
    """Yield ``items`` while drawing ``desc [####----] k/n elapsed eta`` on stderr (silent under ``-q``)."""
    if not logging.getLogger().isEnabledFor(logging.INFO):
        yield from items
        return
    stream = stream or sys.stderr
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)  # type: ignore[arg-type]
    tty = stream.isatty()
    start = time.perf_counter()

    def draw(done: int) -> None:
        elapsed = time.perf_counter() - start
        if total:
            width = 24
            filled = int(width * done / total)
            eta = elapsed / done * (total - done) if done else 0.0
            line = f"{desc} [{'#' * filled}{'-' * (width - filled)}] {done}/{total} {elapsed:5.0f}s eta {eta:4.0f}s"
        else:
            line = f"{desc} {done} {elapsed:5.0f}s"
        if tty:
            stream.write("\r" + line + ("\n" if done == total else ""))
        elif done:  # no carriage-return tricks in logs: one line per finished item
            stream.write(line + "\n")
        stream.flush()

    draw(0)
    done = 0
    for item in items:
        yield item
        done += 1
        draw(done)
