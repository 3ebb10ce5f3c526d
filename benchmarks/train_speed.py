"""Training speed of the real members on this CPU: iterations/s of the real training step per setting.

One step is exactly what ``training.train.train_member`` runs per iteration (``next_batch``: Sampler patch sampling +
augmentation; ``train_step``: forward, float32 loss, backward, clipped AdamW step; the LR scheduler step), on real
prepared cases (``training.train.prepare_case`` with the members' channel specs), for these settings:

  fp32             the default: float32 forward and backward
  bf16             bfloat16 autocast forward (``amp``; weights, loss and gradients float32)
  bf16+cl          bf16 with the weights and batches in channels-last memory order (``channels_last``)
  bf16+cl+compile  bf16+cl through torch.compile (``torch_compile``); compile seconds recorded, a failure recorded
  fp32 1t, bf16+cl 1t   the same with one intra-op thread instead of two
  data             Sampler.batch + augment alone (is data loading the bottleneck?)

Each setting has its own network, optimiser and generators (same seeds). All settings of a member are timed in
interleaved rounds (round r times ``--steps`` steps of every setting in turn) so that a load change on this shared
machine hits every setting alike; the reported rate is 1 / median step time over all rounds, beside the mean.

Writes benchmarks/results/train-speed.json and docs/train_speed.md (generated; no number is typed by hand).
Run from the repository root with the training venv:
    PYTHONPATH=$PWD training/.venv/bin/python benchmarks/train_speed.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from training import config
from training.data import ensure_data, load_cases
from training.nets import build
from training.train import (Loss, Sampler, compiled, memory_format, next_batch, prepare_case,
                            train_step)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "train-speed.json"
DOC = REPO / "docs" / "train_speed.md"
# one case per burden stratum (1-5 %, <1 %, >5 %, empty): fg oversampling and the empty-case path both run
CASES = ["MGHNICU_438", "MGHNICU_447", "MGHNICU_014", "MGHNICU_231"]
SEED = 1

log = logging.getLogger("train_speed")


@dataclass
class Setting:
    name: str
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    threads: int = 2
    data_only: bool = False


SETTINGS = [
    Setting("fp32"),
    Setting("bf16", amp=True),
    Setting("bf16+cl", amp=True, channels_last=True),
    Setting("bf16+cl+compile", amp=True, channels_last=True, compile=True),
    Setting("fp32 1t", threads=1),
    Setting("bf16+cl 1t", amp=True, channels_last=True, threads=1),
    Setting("data", data_only=True),
]
# not in the default run: torch.compile without channels-last (it fails on unetpp2d as the channels-last one does)
OPTIONAL = [Setting("bf16+compile", amp=True, compile=True)]


@dataclass
class Runner:
    """One setting's training state: the same construction as train_member's, seeded alike for every setting."""

    setting: Setting
    spec: dict
    samples: list
    step_times: list[float] = field(default_factory=list)
    warmup_times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    error: str | None = None

    def __post_init__(self):
        s, spec = self.setting, self.spec
        torch.manual_seed(SEED)
        self.dev = torch.device("cpu")
        self.fmt = memory_format(spec["kind"], s.channels_last)
        self.net = build(spec["kind"], self.samples[0].image.shape[0], spec["arch"]).to(memory_format=self.fmt)
        self.net.train()
        self.step_net = compiled(self.net) if s.compile else self.net
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=spec["lr"], weight_decay=1e-4)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda i: 1.0)
        self.sampler = Sampler(self.samples, spec["kind"], spec["train_patch"], np.random.default_rng(SEED))
        self.gen = torch.Generator().manual_seed(SEED)
        self.loss_fn = Loss(config.DEFAULT_LOSS, spec["iterations"])
        self.n_int = sum(1 for src in spec["sources"] if src != "prior")
        self.it = 0

    def step(self) -> float:
        """One training iteration as train_member runs it; returns its wall-clock seconds."""
        torch.set_num_threads(self.setting.threads)
        t = time.perf_counter()
        x, y = next_batch(self.sampler, self.spec["batch"], self.n_int, self.gen, self.dev, self.fmt)
        if not self.setting.data_only:
            self.losses.append(float(train_step(self.step_net, self.opt, self.loss_fn, x, y, self.it,
                                                self.setting.amp)))
            self.sched.step()
        self.it += 1
        return time.perf_counter() - t

    def run(self, n: int, into: list[float]) -> None:
        if self.error:
            return
        try:
            for _ in range(n):
                into.append(self.step())
        except Exception as e:  # noqa: BLE001 - a failing setting (torch.compile) is a result, not a crash
            self.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            log.warning("%s failed:\n%s", self.setting.name, traceback.format_exc(limit=3))


def prepared_samples(cases: dict, spec: dict) -> list:
    channels = config.channel_specs(spec["sources"], config.DEFAULT_INTENSITY, config.brain_stats(list(cases.values())))
    return [prepare_case(c, channels, spec["target_spacing_zyx"]) for c in cases.values()]


def summarise(r: Runner) -> dict:
    out = {"setting": r.setting.__dict__, "error": r.error, "warmup_s": [round(t, 4) for t in r.warmup_times],
           "step_s": [round(t, 4) for t in r.step_times]}
    if r.step_times and not r.error:
        med = statistics.median(r.step_times)
        out.update(median_step_s=round(med, 4), mean_step_s=round(statistics.fmean(r.step_times), 4),
                   it_per_s=round(1.0 / med, 3), n_steps=len(r.step_times))
    if r.setting.compile and r.warmup_times:
        # the first call traces and compiles forward + backward; the rest of it is one ordinary step
        out["compile_s"] = round(r.warmup_times[0] - (out.get("median_step_s") or 0.0), 1)
    if r.losses:
        out["first_losses"] = [round(v, 5) for v in r.losses[:3]]
    return out


def bench_member(name: str, spec: dict, cases: dict, settings: list[Setting], warmup: int, steps: int,
                 rounds: int) -> dict:
    spec = {**spec, "iterations": 1000}
    samples = prepared_samples(cases, spec)
    runners = [Runner(s, spec, samples) for s in settings]
    for r in runners:
        t = time.perf_counter()
        r.run(warmup, r.warmup_times)
        log.info("%s %s: warm-up %d steps %.1f s%s", name, r.setting.name, warmup, time.perf_counter() - t,
                 f" FAILED {r.error}" if r.error else "")
    for k in range(rounds):
        for r in runners:
            r.run(steps, r.step_times)
        log.info("%s round %d/%d: %s", name, k + 1, rounds,
                 ", ".join(f"{r.setting.name} {statistics.median(r.step_times):.3f}s" for r in runners
                           if r.step_times and not r.error))
    return {"batch": spec["batch"], "train_patch": spec["train_patch"], "cases": list(cases),
            "settings": [summarise(r) for r in runners]}


def environment() -> dict:
    return {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_model": _cpu_model(), "cores": os.cpu_count(), "default_threads": torch.get_num_threads(),
            "mkldnn_bf16": bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: None)()),
            "loadavg_1min_start": round(os.getloadavg()[0], 2)}


def _cpu_model() -> str:
    try:
        return next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = ["# Training speed on the CPU", "",
             f"Generated by `benchmarks/train_speed.py` ({result['date']}); raw numbers in "
             "`benchmarks/results/train-speed.json`. Do not edit by hand.", "",
             f"{env['cpu_model']}, {env['cores']} cores, torch {env['torch']}; load average at start "
             f"{env['loadavg_1min_start']} (the machine is shared: compare settings within one run, they were timed "
             f"in interleaved rounds). One iteration = Sampler + augment + forward + loss + backward + AdamW step "
             f"on {len(result['cases'])} real prepared cases; rate = 1 / median step time over "
             f"{result['rounds']} rounds x {result['steps']} steps after {result['warmup']} warm-up steps.", ""]
    for name, m in result["members"].items():
        base = next((s for s in m["settings"] if s["setting"]["name"] == "fp32" and "it_per_s" in s), None)
        lines += [f"## {name} (batch {m['batch']}, patch {'x'.join(map(str, m['train_patch']))})", "",
                  "| setting | threads | it/s | median step s | mean step s | vs fp32 | note |",
                  "|---|---|---|---|---|---|---|"]
        for s in m["settings"]:
            st = s["setting"]
            if "it_per_s" not in s:
                lines.append(f"| {st['name']} | {st['threads']} | - | - | - | - | failed: {s['error']} |")
                continue
            ratio = f"{s['it_per_s'] / base['it_per_s']:.2f}x" if base and not st["data_only"] else ""
            note = f"compile {s['compile_s']:.0f} s" if "compile_s" in s else ""
            if st["data_only"]:
                note = "Sampler.batch + augment only"
            lines.append(f"| {st['name']} | {st['threads']} | {s['it_per_s']:.2f} | {s['median_step_s']:.3f} | "
                         f"{s['mean_step_s']:.3f} | {ratio} | {note} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", nargs="+", default=list(config.MEMBERS), choices=list(config.MEMBERS))
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per setting (compile happens here)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per setting per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settings", nargs="+", default=[s.name for s in SETTINGS],
                    choices=[s.name for s in SETTINGS + OPTIONAL], help="the settings to time (default: all but %s)"
                    % ", ".join(s.name for s in OPTIONAL))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--doc", type=Path, default=DOC)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    settings = [s for s in SETTINGS + OPTIONAL if s.name in args.settings]
    env = environment()
    cases = load_cases(ensure_data(), CASES)
    t0 = time.perf_counter()
    members = {name: bench_member(name, config.MEMBERS[name], cases, settings, args.warmup, args.steps, args.rounds)
               for name in args.members}
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "environment": env,
              "cases": list(cases), "warmup": args.warmup, "steps": args.steps, "rounds": args.rounds,
              "total_s": round(time.perf_counter() - t0, 1), "members": members}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.doc.write_text(markdown(result) + "\n")
    log.info("wrote %s and %s (%.0f s)", args.out, args.doc, result["total_s"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
