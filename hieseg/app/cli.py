"""Command-line interface: ``hieseg predict | merge | evaluate | baseline | make-sample``; Grand Challenge entry.

Logs go to stderr; stdout carries only results (one tab-separated line per case).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path
from typing import Sequence

from hieseg.engine.providers import DEVICE_HELP, device_arg
from hieseg.errors import HiesegError, InputError, OutputError
from hieseg.inputs.cases import Case, collect_input_cases, pair_case
from hieseg.inputs.gc_interface import GC_INPUT_ROOT, GC_OUTPUT_ROOT
from hieseg.inputs.shards import resolve_shard, shard
from hieseg.outputs.paths import MASK_FORMATS, CaseOutputs, case_outputs, summary_path
from hieseg.outputs.progress import progress
from hieseg.outputs.report import write_summary_csv
from hieseg.outputs.resume import completed_report, summary_row
from hieseg.version import __version__

log = logging.getLogger("hieseg")


def setup_logging(verbosity: int = 0) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def parse_bytes(text: str) -> int:
    """'4G', '512M' or a plain byte count."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4G, 512M)")
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=device_arg, default="auto", metavar=DEVICE_HELP.replace(" ", ""),
                        help="auto (default): CUDA when it works, else native OpenVINO when installed, else ONNX "
                             "Runtime's CPU provider; cuda (cuda:N: GPU N) / openvino: fail if that engine cannot "
                             "run; cpu: ONNX Runtime's CPU provider (f32, the reference)")
    parser.add_argument("--precision", choices=("auto", "bf16", "f32"), default="auto",
                        help="OpenVINO's inference precision: auto (default): bf16 where the CPU has native bf16 "
                             "(AMX / AVX512_BF16), else f32; bf16; f32 (the ONNX Runtime providers run f32)")
    parser.add_argument("--fast", action="store_true",
                        help="no flip test-time augmentation: about a third less time for a small accuracy cost "
                             "(docs/benchmark.md)")
    parser.add_argument("--model", type=Path, default=None,
                        help="model folder with manifest.json (default: $HIESEG_MODEL_DIR, else /opt/ml/model "
                             "if it has one, else the model shipped with hieseg)")
    parser.add_argument("--gpu-mem-limit", type=parse_bytes, default=None, metavar="SIZE",
                        help="cap on ONNX Runtime's CUDA memory arena, e.g. 4G")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per session (default: the CPUs this process may use)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log detail")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def _verbosity(args: argparse.Namespace) -> int:
    return -1 if args.quiet else args.verbose


# ---------------------------------------------------------------------------------------------- predict


def _collect_cases(args: argparse.Namespace) -> list[Case]:
    if args.adc or args.zadc:
        if not (args.adc and args.zadc):
            raise InputError(args.adc or args.zadc, "--adc and --zadc must be given together")
        if len(args.paths) != 1:
            raise InputError(None, "with --adc/--zadc give only the OUTPUT folder")
        return [pair_case(args.adc, args.zadc)]
    if len(args.paths) != 2:
        raise InputError(None, "usage: hieseg predict INPUT OUTPUT (or --adc A --zadc Z OUTPUT)")
    return collect_input_cases(Path(args.paths[0]))


def _preflight(out: Path, outputs: Sequence[CaseOutputs]) -> None:
    """Fail before the model loads when the output folders cannot take files (see hieseg.files.preflight)."""
    from hieseg.files import preflight

    preflight(out, {path.parent for case in outputs[:1] for path in case.files()})


def run_predict(args: argparse.Namespace) -> int:
    from hieseg.app.pipeline import Segmenter

    cases = _collect_cases(args)
    out = Path(args.paths[-1])
    shard_spec = resolve_shard(args.shard)
    try:
        cases = shard(cases, shard_spec)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    outputs = {case.case_id: case_outputs(case, out, args.format, args.save_prob, args.qc) for case in cases}
    _preflight(out, list(outputs.values()))
    if not cases:
        log.warning("shard %s holds no cases", shard_spec)
        return 0
    t_start = time.perf_counter()
    segmenter = Segmenter(args.model, args.device, args.gpu_mem_limit, args.threads, args.precision, args.fast)
    reports = _finished_cases(cases, outputs, segmenter.manifest.sha256) if args.resume else {}
    skipped = len(reports)
    failures: dict[str, str] = {}
    todo = [case for case in cases if case.case_id not in reports]
    for case in progress(todo, desc="hieseg") if len(todo) > 1 else todo:
        try:
            result = segmenter.segment_case(case)
            reports[case.case_id] = segmenter.write_outputs(result, outputs[case.case_id])
        except OutputError:
            raise  # the output location failed (a full disk, a quota): the remaining cases cannot be written either
        except Exception as exc:  # one case's failure, whatever it is, must not cost the rest of a cohort run
            failures[case.case_id] = describe_failure(exc)
            log.error("%s: %s", case.case_id, failures[case.case_id])
            continue
        report = reports[case.case_id]
        print(f"{case.case_id}\t{report['lesion_volume_ml']:.3f} mL\t{report['burden_class']}\t"
              f"{outputs[case.case_id].mask}", flush=True)
    rows = [summary_row(reports[case.case_id], outputs[case.case_id].mask) if case.case_id in reports
            else {"case_id": case.case_id, "status": "failed", "error": failures[case.case_id]} for case in cases]
    if len(cases) > 1 or not cases[0].grand_challenge:
        write_summary_csv(rows, summary_path(out, shard_spec))
    log.info("%d case(s) in %.1f s: %d ok, %d failed%s%s", len(cases), time.perf_counter() - t_start,
             len(cases) - len(failures), len(failures), f" ({', '.join(failures)})" if failures else "",
             f" ({skipped} skipped: already done)" if args.resume else "")
    return 1 if failures else 0


def _finished_cases(cases: list[Case], outputs: dict[str, CaseOutputs], manifest_sha256: str) -> dict[str, dict]:
    """--continue: the reports of cases whose outputs are all complete (by this model); those cases are skipped."""
    done = {}
    for case in cases:
        report = completed_report(outputs[case.case_id], manifest_sha256)
        if report is not None:
            done[case.case_id] = report
    log.info("--continue: skipping %d of %d case(s) already done in this output folder", len(done), len(cases))
    return done


def is_bug(exc: BaseException) -> bool:
    """Neither ours (bad input, model, device, output) nor the system's (memory, files): a bug in hieseg."""
    return not isinstance(exc, (HiesegError, MemoryError, OSError))


def describe_failure(exc: BaseException) -> str:
    """One line for a failure: ours and the system's in their own words, a bug named as unexpected (its traceback
    is logged at -v)."""
    if isinstance(exc, MemoryError):
        detail = str(exc).strip()
        return f"{detail or 'out of memory'} (the memory limit is too small for this case)"
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    if not is_bug(exc):
        return line
    log.debug("traceback", exc_info=exc)
    return f"unexpected {type(exc).__name__}: {line}"


def add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="segment HIE lesions in one or many cases",
                       description="Segment every case under INPUT (Grand Challenge or BONBID layout, or a CSV "
                                   "list case_id,adc,zadc) into OUTPUT, or one explicit --adc/--zadc pair.")
    p.add_argument("paths", nargs="+", metavar="INPUT OUTPUT",
                   help="input folder (or CSV case list) and output folder")
    p.add_argument("--adc", type=Path, help="explicit skull-stripped ADC map (with --zadc)")
    p.add_argument("--zadc", type=Path, help="explicit Z-ADC map (with --adc)")
    p.add_argument("--format", choices=MASK_FORMATS, default="mha",
                   help="mask and probability file format (default mha; a Grand Challenge input takes mha only)")
    p.add_argument("--save-prob", action="store_true", help="also write the fused probability map")
    p.add_argument("--qc", action="store_true", help="also write a PNG montage of the predicted lesions")
    p.add_argument("--shard", metavar="K/N|auto",
                   help="process only shard K of N (1-based), for array jobs; auto: from SLURM_ARRAY_TASK_ID "
                        "and SLURM_ARRAY_TASK_COUNT")
    p.add_argument("--continue", dest="resume", action="store_true",
                   help="skip cases whose mask and report in OUTPUT are complete (resume an interrupted run)")
    _add_model_options(p)
    p.set_defaults(func=run_predict)


# ----------------------------------------------------------------------------------------- make-sample


def run_make_sample(args: argparse.Namespace) -> int:
    from hieseg.inputs.phantom import write_sample

    paths = write_sample(args.output, seed=args.seed)
    for path in paths:
        print(path)
    return 0


def add_make_sample_parser(sub) -> None:
    p = sub.add_parser("make-sample", help="write the synthetic sample case (Grand Challenge layout)")
    p.add_argument("output", type=Path, help="folder to write images/... into, e.g. test/input")
    p.add_argument("--seed", type=int, default=2023)
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=run_make_sample)


# ---------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hieseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hieseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_predict_parser(sub)
    try:  # evaluation is an optional extra (surface-distance, matplotlib are imported lazily inside)
        from hieseg.evaluation import baseline, evaluate

        evaluate.register(sub)
        baseline.register(sub)
    except ImportError as exc:  # pragma: no cover - only when the module itself is missing
        log.debug("evaluation commands unavailable: %s", exc)
    from hieseg.app import merge

    merge.register(sub)
    add_make_sample_parser(sub)
    return parser


def _run(func, args: argparse.Namespace) -> int:
    try:
        return func(args)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - the user gets one line; -v shows the traceback of a bug
        log.error("%s%s", describe_failure(exc), " (run with -v for the traceback)" if is_bug(exc) else "")
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(_verbosity(args))
    return _run(args.func, args)


# ------------------------------------------------------------------------------------ Grand Challenge


def run_grand_challenge(args: argparse.Namespace) -> int:
    """One case from INPUT's Grand Challenge layout to its output socket under OUTPUT (gc_interface.GC_OUTPUT)."""
    from hieseg.app.pipeline import Segmenter, check_case_memory
    from hieseg.engine.manifest import load_manifest
    from hieseg.engine.memory import memory_model
    from hieseg.inputs.cases import grand_challenge_case

    case = grand_challenge_case(args.input)
    outputs = case_outputs(case, args.output)
    _preflight(args.output, [outputs])
    # before the sessions load (the manifest only): a case that cannot fit is refused in seconds
    check_case_memory(case, on_gpu=True, model=memory_model(load_manifest(args.model, verify=False)))
    segmenter = Segmenter(args.model, args.device, args.gpu_mem_limit, args.threads, args.precision, args.fast)
    report = segmenter.write_outputs(segmenter.segment_case(case), outputs)
    log.info("lesion %.3f mL (%s of brain, %s), %d component(s); %.2f s", report["lesion_volume_ml"],
             f"{report['lesion_percent_of_brain']:.2f}%", report["burden_class"], report["lesion_components"],
             report["seconds"]["total"])
    print(outputs.mask, flush=True)
    return 0


def grand_challenge_main(argv: Sequence[str] | None = None, input_dir: Path = GC_INPUT_ROOT,
                         output_dir: Path = GC_OUTPUT_ROOT) -> int:
    parser = argparse.ArgumentParser(prog="inference.py",
                                     description="BONBID-HIE Grand Challenge entry point: one case per run.")
    parser.add_argument("--input", type=Path, default=input_dir, help=f"default {input_dir}")
    parser.add_argument("--output", type=Path, default=output_dir, help=f"default {output_dir}")
    _add_model_options(parser)
    args = parser.parse_args(argv)
    setup_logging(_verbosity(args))
    return _run(run_grand_challenge, args)
