"""The lent-GPU run's bookkeeping (training/device_cv.py): which jobs run in which order, which seeds count as
finished, which are averaged, and the settings a seeds workdir is tuned under. The whole path (pack -> run ->
unpack -> tune -> export) runs in CI on the CPU with --quick (.ci/run)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from training import config, device_cv  # noqa: E402
from training.study import TrainingError, make_config  # noqa: E402


def test_jobs_are_seed_major_with_the_2d_member_first():
    jobs = device_cv.job_order(["unet3d", "unetpp2d"], config.MEMBERS, n_folds=5, seeds=3)
    assert len(jobs) == len(set(jobs)) == 2 * 5 * 3
    # every member x fold has its first network before any has a second
    assert {(n, k) for s, n, k in jobs[:10]} == {(n, k) for n in ("unet3d", "unetpp2d") for k in range(5)}
    assert [s for s, _, _ in jobs] == sorted(s for s, _, _ in jobs)
    assert jobs[0] == (0, "unetpp2d", 0) and jobs[5] == (0, "unet3d", 0)
    # seed 0 trains with the CPU run's seed; the others differ per seed, fold and member
    seeds = {device_cv.job_seed(s, n, k, config.MEMBERS[n]["kind"]) for s, n, k in jobs}
    assert len(seeds) == len(jobs)
    assert device_cv.job_seed(0, "unet3d", 2, "3d") == 2001


def test_seeds_done_counts_seeds_finished_on_every_fold(tmp_path):
    meta = {"split": {"folds": [["a"], ["b"], ["c"]]}}
    (tmp_path / "done").mkdir()
    for job in ("unet3d_f0_s0", "unet3d_f1_s0", "unet3d_f2_s0", "unet3d_f0_s1", "unet3d_f1_s1",
                "unetpp2d_f0_s0", "unetpp2d_f1_s0", "unetpp2d_f2_s0", "unetpp2d_f0_s2", "unetpp2d_f1_s2",
                "unetpp2d_f2_s2"):
        (tmp_path / "done" / f"{job}.json").write_text(json.dumps({"seconds": 1.0}))
    # unet3d seed 1 lacks fold 2; unetpp2d seed 2 finished everywhere but seed 1 did not: seeds count from 0
    assert device_cv.seeds_done(tmp_path, meta, ["unet3d", "unetpp2d"], seeds=3) == {"unet3d": 1, "unetpp2d": 1}


def test_a_seed_cut_short_by_the_deadline_is_not_averaged():
    planned = {"unet3d": 1600, "unetpp2d": 1200}
    curves = {f"{n}/fold{f}/seed{s}": {"iterations": planned[n]} for n in planned for f in range(2) for s in range(3)}
    curves["unetpp2d/fold1/seed1"]["iterations"] = 971  # stopped mid-cosine
    bundle = {"k": 3, "n_folds": 2, "planned": planned, "curves": curves}
    assert device_cv.full_schedule_seeds(bundle) == [0, 2]


def test_a_seeds_workdir_is_tuned_under_its_own_settings(tmp_path):
    cfg = make_config(workdir=tmp_path / "seeds", gpu_seeds=3)
    assert cfg.members["unet3d"]["iterations"] == config.MEMBERS["unet3d"]["iterations"]  # the CPU schedule
    assert cfg.settings() == {"loss": config.DEFAULT_LOSS, "intensity": config.DEFAULT_INTENSITY,
                              "trained_on": "gpu", "oof_networks": 3}
    assert "device_cv.sh run --seeds 3" in cfg.command() and "--gpu-seeds 3" in cfg.command()
    # the older GPU run (GPU schedule, one network per fold) keeps the settings it was written with
    assert make_config(workdir=tmp_path / "gpu", gpu=True).settings() == {
        "loss": config.DEFAULT_LOSS, "intensity": config.DEFAULT_INTENSITY, "schedule": "gpu"}
    with pytest.raises(TrainingError):
        make_config(gpu_seeds=0)
