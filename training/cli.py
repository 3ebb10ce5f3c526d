"""python -m training [--quick] [STAGE ...]: tarball -> split -> cross-validation -> OOF tuning -> ONNX -> model/.

Stages (default ``all`` = cv tune export report): ``split`` (not in ``all``: write the committed 5-fold split;
refuses to replace it without --overwrite-split), ``cv`` (train every member on every fold, resuming, then
out-of-fold predictions), ``oof`` (recompute the OOF predictions with ONNX Runtime from the exported fold networks
in the model folder), ``tune`` (every OOF choice, scored by nested cross-validation), ``export`` (ONNX + parity +
manifest for the folds finished), ``report`` (RESULTS.md + learning curve). Re-running a stage skips what is done.
The stages are functions in training/stages.py; this module only parses the command line and calls them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from . import config
from .stages import DEFAULT_STAGES, STAGES
from .study import TrainingError, load_study, make_config, open_workdir, write_split

log = logging.getLogger("training")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stages", nargs="*", default=[], help="all (default: cv tune export report), split, cv, oof, "
                   "tune, export, report")
    p.add_argument("--quick", action="store_true", help="2 cases, 2 folds, a few iterations (CI): same code path")
    p.add_argument("--workdir", help="checkpoints, OOF predictions and logs (default training/runs/cv or /quick)")
    p.add_argument("--model-dir", help="where the ONNX members and manifest go (default model/, quick: workdir/model)")
    p.add_argument("--loss", default=config.DEFAULT_LOSS, choices=config.LOSSES)
    p.add_argument("--intensity", default=config.DEFAULT_INTENSITY, choices=config.INTENSITIES)
    p.add_argument("--folds", type=lambda s: [int(v) for v in s.split(",")],
                   help="cv and tune: only these folds (variant comparisons)")
    p.add_argument("--ship-folds", type=lambda s: [int(v) for v in s.split(",")],
                   help="export: ship only these finished folds' networks (inference-time budget); "
                        "fusion is still tuned on every finished fold's OOF predictions")
    p.add_argument("--members", type=lambda s: s.split(","),
                   help=f"train / tune only these members of config.MEMBERS ({', '.join(config.MEMBERS)}): variant "
                        "comparisons")
    p.add_argument("--iterations", type=lambda s: {k: int(v) for k, v in (kv.split("=") for kv in s.split(","))},
                   help="MEMBER=N[,...]: training iterations instead of config.MEMBERS' (use an own --workdir), "
                        f"e.g. {next(iter(config.MEMBERS))}=2000")
    p.add_argument("--hard-negatives", type=float, metavar="FRACTION",
                   help="centre this share of the training patches on voxels where Z-ADC < -2 fires outside the "
                        "lesions (precision-oriented sampling; use an own --workdir), e.g. 0.33")
    p.add_argument("--carvemix", type=float, metavar="FRACTION",
                   help="paste a real lesion of another training case, with its own ADC / Z-ADC values, into this "
                        "share of the training patches (CarveMix-style lesion copy-paste, training/carvemix.py; use an "
                        "own --workdir), e.g. 0.3")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="replicate N of a variant: the same settings trained from other random draws (use an own "
                        "--workdir; 0, the default, is every run's seed)")
    p.add_argument("--train-cases", type=int, metavar="K",
                   help="data curve: each fold trains on K of its training cases, spread evenly over the lesion "
                        "burden (use an own --workdir; never shipped)")
    p.add_argument("--bf16", action="store_true",
                   help="train in bfloat16 autocast with channels-last tensors (2-3x faster on a CPU with AVX512-BF16 "
                        "or AMX, refused on one without, where it is emulated; weights, loss and the exported ONNX "
                        "stay float32; use an own --workdir)")
    p.add_argument("--gpu", action="store_true",
                   help="the workdir holds networks trained on a lent GPU (python -m training.device_cv unpack): "
                        "config.GPU_SCHEDULE, OOF/tune/export/report run here as usual")
    p.add_argument("--gpu-seeds", type=int, metavar="K",
                   help="the workdir holds networks trained on a lent GPU, K per member and fold with different seeds, "
                        "each OOF map their mean (python -m training.device_cv run --seeds K, then unpack); the "
                        "schedule is the CPU one unless --gpu")
    p.add_argument("--compare", action="append", metavar="WORKDIR",
                   help="tune: OOF predictions of another workdir compete as other variants of the same members "
                        "(e.g. training/runs/cv, whose networks are the exported ones in the model folder)")
    p.add_argument("--allow-dirty", action="store_true",
                   help="export: allow uncommitted changes under training/ or hieseg/ (recorded in the manifest)")
    p.add_argument("--overwrite-split", action="store_true",
                   help="split: replace training/splits.json (every committed score refers to it)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    bad = [s for s in args.stages if s not in ("all", "split", *STAGES)]
    if bad:
        p.error(f"unknown stage(s) {bad}")
    stages = DEFAULT_STAGES if not args.stages or "all" in args.stages else args.stages
    t0 = time.time()
    try:
        if "split" in stages:
            log.info("== split")
            split = write_split(overwrite=args.overwrite_split)
            log.info(f"  wrote training/splits.json: {len(split['folds'])} folds")
            stages = [s for s in stages if s != "split"]
            if not stages:
                return 0
        cfg = make_config(quick=args.quick, workdir=args.workdir, model_dir=args.model_dir, members=args.members,
                          gpu=args.gpu, gpu_seeds=args.gpu_seeds, iterations=args.iterations,
                          hard_negative_fraction=args.hard_negatives,
                          carvemix_fraction=args.carvemix, seed=args.seed or None, train_cases=args.train_cases,
                          bf16=args.bf16 or None, loss=args.loss, intensity=args.intensity,
                          folds=args.folds, ship_folds=args.ship_folds, compare=args.compare,
                          allow_dirty=args.allow_dirty, threads=args.threads)
        open_workdir(cfg, fresh="cv" in stages)
        study = load_study(cfg)
        for stage in stages:
            log.info(f"== {stage}")
            STAGES[stage](study)
    except TrainingError as exc:
        log.error(f"error: {exc}")
        return 2
    log.info(f"done in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
