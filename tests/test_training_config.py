"""A run's settings: replicate seeds and lesion copy-paste are recorded, reproduced by the run's command, and a
workdir refuses to resume under other settings (variants never mix networks)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("torch")

from training.study import Study, TrainingError, make_config, open_workdir  # noqa: E402


def test_a_replicate_seed_is_recorded_and_changes_every_folds_seed(tmp_path):
    base = make_config(workdir=tmp_path / "a", loss="tvfocal", bf16=True)
    rep = make_config(workdir=tmp_path / "b", loss="tvfocal", bf16=True, seed=1)
    assert "seed" not in base.settings() and rep.settings()["seed"] == 1
    assert "--seed 1" in rep.command() and "--seed" not in base.command()
    seeds = {(s, k, kind): Study.train_seed(SimpleNamespace(config=c), k, kind)
             for s, c in ((0, base), (1, rep)) for k in range(5) for kind in ("3d", "2d")}
    assert len(set(seeds.values())) == len(seeds)  # no two networks of the two replicates share a seed
    assert seeds[(0, 0, "3d")] == 1 and seeds[(0, 2, "2d")] == 2002  # the seeds every earlier run was trained with


def test_carvemix_share_is_validated_recorded_and_given_to_every_member(tmp_path):
    cfg = make_config(workdir=tmp_path / "cm", carvemix_fraction=0.3)
    assert cfg.settings()["carvemix_fraction"] == 0.3 and "--carvemix 0.3" in cfg.command()
    assert all(m["carvemix_fraction"] == 0.3 for m in cfg.members.values())
    for bad in (0.0001 - 1, 1.5):
        with pytest.raises(TrainingError):
            make_config(workdir=tmp_path / "bad", carvemix_fraction=bad)


def test_a_workdir_refuses_another_seed(tmp_path):
    open_workdir(make_config(workdir=tmp_path / "w", seed=1), fresh=True)
    open_workdir(make_config(workdir=tmp_path / "w", seed=1), fresh=True)  # same settings: resumes
    with pytest.raises(TrainingError):
        open_workdir(make_config(workdir=tmp_path / "w"), fresh=True)


def test_a_data_curve_run_trains_on_an_even_spread_of_the_burden_and_is_recorded(tmp_path):
    cfg = make_config(workdir=tmp_path / "half", train_cases=4)
    assert cfg.settings()["train_cases"] == 4 and "--train-cases 4" in cfg.command()
    burden = {f"c{i}": b for i, b in enumerate([0.0, 0.3, 0.001, 0.05, 0.0, 0.7, 0.01, 0.2, 0.002, 0.1])}
    study = SimpleNamespace(config=cfg, folds=[["c0", "c1"], list(burden)[2:]],
                            cases={c: SimpleNamespace(burden=b) for c, b in burden.items()})
    ids = Study.training_ids(study, 0)
    # fold 0's training cases by burden: c4 0, c2 .001, c8 .002, c6 .01, c3 .05, c9 .1, c7 .2, c5 .7 -> positions
    # 0, 2.33, 4.67, 7 rounded to 0, 2, 5, 7: the lesion-free end, the largest lesion and two between
    assert ids == ["c4", "c8", "c9", "c5"]
    full = Study.training_ids(SimpleNamespace(config=make_config(workdir=tmp_path / "all"), folds=study.folds,
                                              cases=study.cases), 0)
    assert full == list(burden)[2:]
    with pytest.raises(TrainingError):
        make_config(workdir=tmp_path / "bad", train_cases=1)
