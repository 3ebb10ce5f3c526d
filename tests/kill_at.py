"""Run ``hieseg`` and SIGKILL it at a named stage of the K-th case's output commit (the deterministic fault of
tests/test_faults.py and tests/test_resume_real.py; no timing involved):

    python tests/kill_at.py STAGE K predict IN OUT ...

STAGE is ``staging`` (a temporary of case K is on disk, nothing renamed), ``before-commit`` (every file of case K
staged and verified, none renamed) or ``mid-commit`` (case K's mask renamed into place, its report not yet: the one
moment a mask can be visible without its report). Cases count from 1, by their OutputSet commits.
"""

from __future__ import annotations

import os
import signal
import sys

import hieseg.files as files
from hieseg.app.cli import main

STAGES = ("staging", "before-commit", "mid-commit")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(stage: str, k: int) -> None:
    """Patch hieseg.files so that the process kills itself at ``stage`` of the ``k``-th case commit."""
    if stage not in STAGES:
        raise SystemExit(f"kill_at.py: STAGE must be one of {', '.join(STAGES)}")
    seen = {"commits": 0, "images": 0}
    commit, stage_image, replace = files.commit, files.stage_image, os.replace

    def counting_commit(staged):
        seen["commits"] += 1
        if seen["commits"] == k and stage == "before-commit":
            _die()
        if seen["commits"] == k and stage == "mid-commit" and len(staged) > 1:
            renamed = []

            def replace_then_die(src, dst):
                replace(src, dst)
                renamed.append(dst)
                if len(renamed) == 1:
                    _die()

            files.os.replace = replace_then_die
        return commit(staged)

    def counting_stage_image(image, final, compress=True):
        tmp = stage_image(image, final, compress)
        seen["images"] += 1
        if seen["images"] == k and stage == "staging":
            _die()
        return tmp

    files.commit = counting_commit
    files.stage_image = counting_stage_image


if __name__ == "__main__":
    arm(sys.argv[1], int(sys.argv[2]))
    raise SystemExit(main(sys.argv[3:]))
