"""What a training run works on: its configuration (``TrainConfig``) and the data it is applied to (``Study``:
cases, split, intensity statistics, the workdir's layout). No stage logic here (see stages.py) and no side effect
on import or construction beyond reading data: the workdir is created by ``open_workdir``, the split written only
by the ``split`` stage."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import config
from .data import REPO, SPLITS, RawCase, ensure_data, load_cases, load_split, make_split

QUICK_CASES = ["MGHNICU_438", "MGHNICU_447"]


class TrainingError(Exception):
    """A training stage cannot go on (missing inputs, inconsistent workdir); the CLI prints it as one line."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run: which members with which schedule, loss, intensity transform, where it works."""

    members: dict[str, dict[str, Any]]
    workdir: Path
    model_dir: Path
    loss: str = config.DEFAULT_LOSS
    intensity: str = config.DEFAULT_INTENSITY
    crop_margin_mm: float = config.CROP_MARGIN_MM
    quick: bool = False
    schedule: str = "cpu"  # "gpu": config.GPU_SCHEDULE (networks trained on a lent GPU)
    trained_on: str = "cpu"  # "gpu": the networks came from a lent GPU (training/device_cv.py), not from cv here
    oof_networks: int = 1  # networks per member and fold (seeds) whose mean is each OOF map; the first one ships
    iterations: dict[str, int] = field(default_factory=dict)  # overrides of config.MEMBERS' iterations
    hard_negative_fraction: float = 0.0  # share of training patches centred on the rule's false positives
    carvemix_fraction: float = 0.0  # share of training patches given another case's lesion (training/carvemix.py)
    seed: int = 0  # replicate number: 0 is every run's default; others train the same variant from other seeds
    train_cases: int | None = None  # data curve: each fold trains on this many of its training cases (training_ids)
    bf16: bool = False  # CPU fast path: bfloat16 autocast forward + channels-last (benchmarks/train_speed.py)
    folds: list[int] | None = None  # cv / tune only these folds
    ship_folds: list[int] | None = None  # export only these folds' networks
    compare: tuple[Path, ...] = ()  # other workdirs whose OOF predictions compete in the tuning
    allow_dirty: bool = False
    threads: int = 2

    def settings(self) -> dict[str, Any]:
        """What settings.json records: a workdir's networks are only resumed or tuned under the same settings."""
        out: dict[str, Any] = {"loss": self.loss, "intensity": self.intensity}
        if self.iterations:
            out["iterations"] = self.iterations
        if self.schedule == "gpu":
            out["schedule"] = "gpu"
        elif self.trained_on == "gpu":
            out["trained_on"] = "gpu"
        if self.oof_networks > 1:
            out["oof_networks"] = self.oof_networks
        if self.hard_negative_fraction:
            out["hard_negative_fraction"] = self.hard_negative_fraction
        if self.carvemix_fraction:
            out["carvemix_fraction"] = self.carvemix_fraction
        if self.seed:
            out["seed"] = self.seed
        if self.train_cases:
            out["train_cases"] = self.train_cases
        if self.bf16:
            out["precision"] = "bf16+channels_last"
        return out

    def command(self) -> str:
        """The one command that reproduces this run's networks and manifest (its workdir's settings included)."""
        parts = ["python -m training all"] + (["--quick"] if self.quick else [])
        default_workdir = REPO / "training" / "runs" / ("quick" if self.quick else "cv")
        if self.workdir != default_workdir:
            parts += ["--workdir", _relative(self.workdir)]
        if self.loss != config.DEFAULT_LOSS:
            parts += ["--loss", self.loss]
        if self.intensity != config.DEFAULT_INTENSITY:
            parts += ["--intensity", self.intensity]
        if self.iterations:
            parts += ["--iterations", ",".join(f"{k}={v}" for k, v in self.iterations.items())]
        if len(self.members) < len(config.MEMBERS):
            parts += ["--members", ",".join(self.members)]
        if self.hard_negative_fraction:
            parts += ["--hard-negatives", str(self.hard_negative_fraction)]
        if self.carvemix_fraction:
            parts += ["--carvemix", str(self.carvemix_fraction)]
        if self.seed:
            parts += ["--seed", str(self.seed)]
        if self.train_cases:
            parts += ["--train-cases", str(self.train_cases)]
        if self.bf16:
            parts += ["--bf16"]
        if self.trained_on == "gpu":
            device = (["--schedule gpu"] if self.schedule == "gpu" else []) + [f"--seeds {self.oof_networks}"]
            lead = f"training/device_cv.sh run {' '.join(device)} (on a lent GPU; see training/README.md), then"
            parts = [lead, *parts] + (["--gpu"] if self.schedule == "gpu" else [])
            if self.schedule != "gpu" or self.oof_networks > 1:
                parts += ["--gpu-seeds", str(self.oof_networks)]
        for d in self.compare:
            parts += ["--compare", _relative(d)]
        return " ".join(parts)


def make_config(*, quick: bool = False, workdir: str | Path | None = None, model_dir: str | Path | None = None,
                members: list[str] | None = None, gpu: bool = False, gpu_seeds: int | None = None,
                iterations: dict[str, int] | None = None,
                hard_negative_fraction: float | None = None, carvemix_fraction: float | None = None,
                **settings: Any) -> TrainConfig:
    """A run's configuration from the CLI's choices: config.MEMBERS (or the quick schedule), restricted to
    ``members``, with the GPU schedule or ``iterations`` applied; default folders under training/runs/.
    ``gpu``: networks trained on a lent GPU with config.GPU_SCHEDULE; ``gpu_seeds``: networks trained on a lent GPU,
    that many per member and fold, their mean being each OOF map (with the CPU schedule unless ``gpu``)."""
    specs = config.quick(config.MEMBERS) if quick else config.MEMBERS
    if members:
        unknown = set(members) - set(specs)
        if unknown:
            raise TrainingError(f"--members: unknown member(s) {sorted(unknown)}; known: {sorted(specs)}")
        specs = {n: m for n, m in specs.items() if n in members}
    if gpu and not quick:
        specs = {n: {**m, **config.GPU_SCHEDULE[n]} for n, m in specs.items()}
    if iterations:
        unknown = set(iterations) - set(specs)
        if unknown:
            raise TrainingError(f"--iterations: unknown member(s) {sorted(unknown)}")
        specs = {n: {**m, "iterations": iterations.get(n, m["iterations"])} for n, m in specs.items()}
    if hard_negative_fraction:
        if not 0 < hard_negative_fraction < 1 - 1 / 3:
            raise TrainingError(f"--hard-negatives {hard_negative_fraction}: a share of the patches in (0, 2/3)")
        specs = {n: {**m, "hard_negative_fraction": hard_negative_fraction} for n, m in specs.items()}
    if carvemix_fraction:
        if not 0 < carvemix_fraction <= 1:
            raise TrainingError(f"--carvemix {carvemix_fraction}: a share of the patches in (0, 1]")
        specs = {n: {**m, "carvemix_fraction": carvemix_fraction} for n, m in specs.items()}
    if settings.get("train_cases") is not None and settings["train_cases"] < 2:
        raise TrainingError(f"--train-cases {settings['train_cases']}: at least two training cases per fold")
    wd = Path(workdir) if workdir else REPO / "training" / "runs" / ("quick" if quick else "cv")
    md = Path(model_dir) if model_dir else (wd / "model" if quick else REPO / "model")
    if gpu_seeds is not None and gpu_seeds < 1:
        raise TrainingError(f"--gpu-seeds {gpu_seeds}: at least one network per fold")
    return TrainConfig(members=specs, workdir=wd, model_dir=md, quick=quick, schedule="gpu" if gpu else "cpu",
                       trained_on="gpu" if gpu or gpu_seeds else "cpu", oof_networks=gpu_seeds or 1,
                       iterations=dict(iterations or {}), hard_negative_fraction=hard_negative_fraction or 0.0,
                       carvemix_fraction=carvemix_fraction or 0.0,
                       **{k: (tuple(Path(d) for d in v) if k == "compare" else v)
                          for k, v in settings.items() if v is not None})


@dataclass
class Study:
    """A configuration applied to the data: the cases, their folds, brain intensity statistics, and where each
    fold's networks and OOF predictions live in the workdir."""

    config: TrainConfig
    cases: dict[str, RawCase]
    split: dict[str, Any]
    stats: dict[str, Any]

    @property
    def folds(self) -> list[list[str]]:
        return self.split["folds"]

    @property
    def members(self) -> dict[str, dict[str, Any]]:
        return self.config.members

    @property
    def workdir(self) -> Path:
        return self.config.workdir

    def channels(self, name: str) -> list[dict]:
        return config.channel_specs(self.members[name]["sources"], self.config.intensity, self.stats)

    def samples(self, name: str, ids: list[str]):
        from .train import prepare_case

        spec = self.members[name]
        return [prepare_case(self.cases[c], self.channels(name), spec["target_spacing_zyx"],
                             self.config.crop_margin_mm) for c in ids]

    def fold_dir(self, name: str, k: int) -> Path:
        return self.workdir / name / f"fold{k}"

    def oof_path(self, name: str, case_id: str, workdir: Path | None = None) -> Path:
        return (workdir or self.workdir) / "oof" / name / f"{case_id}.npz"

    def fold_done(self, k: int) -> bool:
        """Fold k's OOF predictions exist for every member (from its checkpoints, or from its exported networks
        by the ``oof`` stage): the fold can be tuned, and ``cv`` does not train it again."""
        return all(self.oof_path(n, c).is_file() for n in self.members for c in self.folds[k])

    def fold_tunable(self, k: int) -> bool:
        """Fold k's OOF predictions exist for every member in at least one pool source (this workdir or a
        ``--compare`` one): the tuning can score it, e.g. a shipped pair whose networks come from two runs."""
        sources = list(self.pool_sources().values())
        return all(any(self.oof_path(n, c, wd).is_file() for wd in sources)
                   for n in self.members for c in self.folds[k])

    def finished_folds(self) -> list[int]:
        """The folds the tuning (and what reads its OOF maps) works on."""
        return [k for k in range(len(self.folds)) if self.fold_tunable(k)]

    def train_seed(self, k: int, kind: str) -> int:
        """The random seed of fold k's network of a member kind: fixed per fold and kind (runs that differ in one
        setting start from the same draws), offset by the replicate number ``--seed``."""
        return 1000 * k + (1 if kind == "3d" else 2) + 10 * self.config.seed

    def training_ids(self, k: int) -> list[str]:
        """Fold k's training cases: every other fold's, or with ``train_cases`` that many of them spread evenly
        over the burden order (a data curve keeps the mix of lesion-free, small and large lesions)."""
        ids = [c for f, fold in enumerate(self.folds) if f != k for c in fold]
        n = self.config.train_cases
        if not n or n >= len(ids):
            return ids
        by_burden = sorted(ids, key=lambda c: (self.cases[c].burden, c))
        return [by_burden[i] for i in np.unique(np.round(np.linspace(0, len(ids) - 1, n)).astype(int))]

    def selected_folds(self) -> list[int]:
        """The folds a stage works on: all, or ``--folds``."""
        return [k for k in range(len(self.folds)) if self.config.folds is None or k in self.config.folds]

    def pool_sources(self) -> dict[str, Path]:
        """Workdirs whose OOF predictions compete in the tuning: this run's and each ``--compare`` workdir, by
        folder name (pool members are named ``<member>@<folder>``)."""
        out = {self.workdir.name: self.workdir}
        for d in self.config.compare:
            out[d.name] = d
        return out


def load_study(cfg: TrainConfig, split_path: Path = SPLITS) -> Study:
    """The cases (the tarball extracted and verified), the committed split (quick: 2 cases in 2 folds, made
    here), and the intensity statistics over all brain voxels (unsupervised; no labels involved)."""
    import torch

    torch.set_num_threads(cfg.threads)
    cases = load_cases(ensure_data(), QUICK_CASES if cfg.quick else None)
    if cfg.quick:
        split = make_split({c: cases[c].burden for c in QUICK_CASES}, n_folds=2)
    elif not split_path.is_file():
        raise TrainingError(f"{split_path} missing: run `python -m training split` first")
    else:
        split = load_split(split_path)
        unknown = sorted({c for f in split["folds"] for c in f} - set(cases))
        if unknown:
            raise TrainingError(f"{split_path}: case(s) {unknown[:3]} are not in the data")
    return Study(cfg, cases, split, config.brain_stats(list(cases.values())))


def open_workdir(cfg: TrainConfig, fresh: bool) -> None:
    """Create the workdir, or check that it was started with the same settings. ``fresh``: a quick smoke run in
    the default workdir starts from scratch (its old networks would otherwise be resumed)."""
    if cfg.quick and fresh and cfg.workdir == make_config(quick=True).workdir and cfg.workdir.is_dir():
        shutil.rmtree(cfg.workdir)
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    sfile = cfg.workdir / "settings.json"
    if sfile.is_file():
        old = json.loads(sfile.read_text())
        if old != cfg.settings():
            raise TrainingError(f"{cfg.workdir} was started with {old}; use another --workdir for {cfg.settings()}")
    else:
        sfile.write_text(json.dumps(cfg.settings()) + "\n")


def write_split(path: Path = SPLITS, n_folds: int = 5, overwrite: bool = False) -> dict:
    """The ``split`` stage: stratified folds of the 40 cases written to ``path`` (committed). Refuses to replace
    an existing split unless asked: every committed score and shipped network refers to it."""
    if path.is_file() and not overwrite:
        raise TrainingError(f"{path} exists (every committed score refers to it); pass --overwrite-split to replace it")
    cases = load_cases(ensure_data())
    split = make_split({c: v.burden for c, v in cases.items()}, n_folds)
    path.write_text(json.dumps(split, indent=1) + "\n")
    return split


def _relative(path: Path) -> str:
    path = Path(path)
    return str(path.relative_to(REPO)) if path.is_absolute() and path.is_relative_to(REPO) else str(path)

