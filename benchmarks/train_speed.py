"""Training speed of the real members on this CPU: iterations/s of the real training step per setting.

One step is exactly what ``training.train.train_member`` runs per iteration (``next_batch``: Sampler patch sampling +
augmentation; ``train_step``: forward, float32 loss, backward, clipped AdamW step; the LR scheduler step), on real
prepared cases (``training.train.prepare_case`` with the members' channel specs), for these settings:

  fp32             the default: float32 forward and backward
  bf16             bfloat16 autocast forward (``amp``; weights, loss and gradients float32)
  bf16+cl          bf16 with the weights and batches in channels-last memory order (``channels_last``)
  bf16+cl+compile  bf16+cl through torch.compile (Inductor); compile seconds recorded, a failure recorded
  fp32 1t, bf16 1t, bf16+cl 1t   the same with one intra-op thread instead of two
  fp32 passive, bf16+cl passive   two threads with OMP_WAIT_POLICY=PASSIVE (waiting threads sleep, not spin)
  data, data 1t    Sampler.batch + augment alone (is data loading the bottleneck?), two threads and one

Each setting has its own network, optimiser and generators (same seeds); the settings of one OpenMP environment
share a worker process. All settings of a member are timed in interleaved rounds (round r times ``--steps`` steps of
every setting in turn, one worker at a time) so that a load change on this shared machine hits every setting alike;
the reported rate is 1 / median step time over all rounds, beside the mean. torch.compile starts from an empty
Inductor cache, so its compile time is what a new training run pays.

Writes benchmarks/results/train-speed.json and docs/train_speed.md (generated; no number is typed by hand).
Run from the repository root with the training venv:
    PYTHONPATH=$PWD training/.venv/bin/python benchmarks/train_speed.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from training import config
from training.data import ensure_data, load_cases
from training.nets import build
from training.train import Loss, Sampler, memory_format, next_batch, prepare_case, train_step

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
    env: tuple = ()  # environment variables of the worker process, e.g. (("OMP_WAIT_POLICY", "PASSIVE"),)


# libgomp threads waiting at a barrier spin before they sleep; on cores shared with other jobs a spinning thread
# can hold a core its partner needs. PASSIVE makes them sleep at once (read when the OpenMP runtime starts, so the
# settings with it run in a worker process of their own).
PASSIVE = (("OMP_WAIT_POLICY", "PASSIVE"),)
SETTINGS = [
    Setting("fp32"),
    Setting("bf16", amp=True),
    Setting("bf16+cl", amp=True, channels_last=True),
    Setting("bf16+cl+compile", amp=True, channels_last=True, compile=True),
    Setting("fp32 1t", threads=1),
    Setting("bf16 1t", amp=True, threads=1),
    Setting("bf16+cl 1t", amp=True, channels_last=True, threads=1),
    Setting("fp32 passive", env=PASSIVE),
    Setting("bf16+cl passive", amp=True, channels_last=True, env=PASSIVE),
    Setting("data", data_only=True),
    Setting("data 1t", data_only=True, threads=1),
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
    failed_after_s: float | None = None  # how long the failing step ran (a compile that fails: its compile time)

    def __post_init__(self):
        s, spec = self.setting, self.spec
        torch.manual_seed(SEED)
        self.dev = torch.device("cpu")
        self.fmt = memory_format(spec["kind"], s.channels_last)
        self.net = build(spec["kind"], self.samples[0].image.shape[0], spec["arch"]).to(memory_format=self.fmt)
        self.net.train()
        # the compiled wrapper shares the parameters (train_member has no compile option: it did not pay, see the doc)
        self.step_net = torch.compile(self.net) if s.compile else self.net
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
        t = time.perf_counter()
        try:
            for _ in range(n):
                t = time.perf_counter()
                into.append(self.step())
        except Exception as e:  # noqa: BLE001 - a failing setting (torch.compile) is a result, not a crash
            self.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            self.failed_after_s = time.perf_counter() - t
            log.warning("%s failed:\n%s", self.setting.name, traceback.format_exc(limit=3))


def prepared_samples(cases: dict, spec: dict) -> list:
    channels = config.channel_specs(spec["sources"], config.DEFAULT_INTENSITY, config.brain_stats(list(cases.values())))
    return [prepare_case(c, channels, spec["target_spacing_zyx"], config.CROP_MARGIN_MM) for c in cases.values()]


def summarise(r: Runner) -> dict:
    out = {"setting": r.setting.__dict__, "error": r.error, "warmup_s": [round(t, 4) for t in r.warmup_times],
           "step_s": [round(t, 4) for t in r.step_times]}
    if r.step_times and not r.error:
        med = statistics.median(r.step_times)
        out.update(median_step_s=round(med, 4), mean_step_s=round(statistics.fmean(r.step_times), 4),
                   it_per_s=round(1.0 / med, 3), n_steps=len(r.step_times))
    if r.failed_after_s is not None:
        out["failed_after_s"] = round(r.failed_after_s, 1)
    if r.setting.compile and r.warmup_times:
        # the first call traces and compiles forward + backward; the rest of it is one ordinary step
        out["compile_s"] = round(r.warmup_times[0] - (out.get("median_step_s") or 0.0), 1)
    if r.losses:
        out["first_losses"] = [round(v, 5) for v in r.losses[:3]]
    return out


def _worker(conn, member: str, settings: list[Setting], warmup: int, steps: int) -> None:
    """One process per environment group: builds its settings' runners, warms them up, then times one round of
    ``steps`` steps per setting on every "round" it receives; "stop" returns the summaries."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    spec = {**config.MEMBERS[member], "iterations": 1000}
    samples = prepared_samples(load_cases(ensure_data(), CASES), spec)
    runners = [Runner(s, spec, samples) for s in settings]
    for r in runners:
        t = time.perf_counter()
        r.run(warmup, r.warmup_times)
        log.info("%s %s: warm-up %d steps %.1f s%s", member, r.setting.name, warmup, time.perf_counter() - t,
                 f" FAILED {r.error}" if r.error else "")
    conn.send("ready")
    while conn.recv() == "round":
        for r in runners:
            r.run(steps, r.step_times)
        conn.send({r.setting.name: statistics.median(r.step_times) for r in runners if r.step_times and not r.error})
    conn.send([summarise(r) for r in runners])


@contextlib.contextmanager
def _environ(extra: dict):
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def bench_member(name: str, settings: list[Setting], warmup: int, steps: int, rounds: int) -> dict:
    """All settings of one member, one worker process per environment group, timed in interleaved rounds: only
    one worker runs at a time, so the settings never compete with each other, only with the machine's load."""
    groups: dict[tuple, list[Setting]] = {}
    for s in settings:
        groups.setdefault(s.env, []).append(s)
    ctx = mp.get_context("spawn")
    workers = []
    for env, group in groups.items():
        conn, child = ctx.Pipe()
        with _environ(dict(env)):
            proc = ctx.Process(target=_worker, args=(child, name, group, warmup, steps))
            proc.start()
        if conn.recv() != "ready":
            raise RuntimeError(f"{name}: worker for {env} did not start")
        workers.append((proc, conn))
    for k in range(rounds):
        medians = {}
        for _, conn in workers:
            conn.send("round")
            medians.update(conn.recv())
        log.info("%s round %d/%d: %s", name, k + 1, rounds, ", ".join(f"{n} {t:.3f}s" for n, t in medians.items()))
    summaries = {}
    for proc, conn in workers:
        conn.send("stop")
        summaries.update({sm["setting"]["name"]: sm for sm in conn.recv()})
        proc.join()
    spec = config.MEMBERS[name]
    return {"batch": spec["batch"], "train_patch": spec["train_patch"],
            "settings": [summaries[s.name] for s in settings]}


def environment() -> dict:
    return {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_model": _cpu_model(), "cpu_flags": _cpu_flags(), "cores": os.cpu_count(),
            "default_threads": torch.get_num_threads(),
            "mkldnn_bf16": bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: None)()),
            "loadavg_1min_start": round(os.getloadavg()[0], 2)}


def _cpu_flags() -> list[str]:
    """The CPU's bfloat16 / matrix-unit flags (oneDNN runs bf16 convolutions on AVX512-BF16 or AMX when present)."""
    try:
        flags = next(ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile"))


def _cpu_model() -> str:
    try:
        return next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def fastest(member: dict) -> dict | None:
    """The timed training setting (not data loading alone) with the highest rate."""
    timed = [s for s in member["settings"] if "it_per_s" in s and not s["setting"]["data_only"]]
    return max(timed, key=lambda s: s["it_per_s"], default=None)


def same_threads_fp32(member: dict, setting: dict) -> dict | None:
    """The plain float32 setting timed with the same threads and OpenMP environment as ``setting``."""
    return next((s for s in member["settings"] if "it_per_s" in s and not s["setting"]["amp"]
                 and not s["setting"]["data_only"] and not s["setting"]["channels_last"]
                 and not s["setting"]["compile"] and s["setting"]["threads"] == setting["threads"]
                 and list(s["setting"]["env"]) == list(setting["env"])), None)


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = ["# Training speed on the CPU", "",
             f"Generated by `benchmarks/train_speed.py` ({result['date']}); raw numbers in "
             "`benchmarks/results/train-speed.json`. Do not edit by hand.", "",
             f"{env['cpu_model']} ({' '.join(env.get('cpu_flags', []))}), {env['cores']} cores, "
             f"torch {env['torch']}; 1-min load average {env['loadavg_1min_start']} at start, "
             f"{result['loadavg_1min_end']} at the end (the machine is shared: compare settings within one run, "
             "they were timed in interleaved rounds). One iteration = "
             f"Sampler + augment + forward + loss + backward + AdamW step on {len(result['cases'])} real prepared "
             f"cases; rate = 1 / median step time over {result['rounds']} rounds x {result['steps']} steps after "
             f"{result['warmup']} warm-up steps.", ""]
    for name, m in result["members"].items():
        base = next((s for s in m["settings"] if s["setting"]["name"] == "fp32" and "it_per_s" in s), None)
        lines += [f"## {name} (batch {m['batch']}, patch {'x'.join(map(str, m['train_patch']))})", "",
                  "| setting | threads | it/s | median step s | mean step s | vs fp32 | vs fp32, same threads | note |",
                  "|---|---|---|---|---|---|---|---|"]
        for s in m["settings"]:
            st = s["setting"]
            if "it_per_s" not in s:
                after = f" after {s['failed_after_s']:.0f} s" if "failed_after_s" in s else ""
                lines.append(f"| {st['name']} | {st['threads']} | - | - | - | - | - | failed{after}: {s['error']} |")
                continue
            ratio = f"{s['it_per_s'] / base['it_per_s']:.2f}x" if base and not st["data_only"] else ""
            twin = same_threads_fp32(m, st)
            twin_ratio = f"{s['it_per_s'] / twin['it_per_s']:.2f}x" if twin and not st["data_only"] else ""
            note = f"compile {s['compile_s']:.0f} s" if "compile_s" in s else ""
            if st["data_only"]:
                note = "Sampler.batch + augment only"
            lines.append(f"| {st['name']} | {st['threads']} | {s['it_per_s']:.2f} | {s['median_step_s']:.3f} | "
                         f"{s['mean_step_s']:.3f} | {ratio} | {twin_ratio} | {note} |")
        best = fastest(m)
        if best and base:
            lines += ["", f"Fastest training step in this run: **{best['setting']['name']}**, {best['it_per_s']:.2f} "
                          f"it/s ({best['it_per_s'] / base['it_per_s']:.2f}x fp32 at 2 threads)."]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", nargs="+", default=list(config.MEMBERS), choices=list(config.MEMBERS))
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per setting (compile happens here)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per setting per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settings", nargs="+", default=[s.name for s in SETTINGS],
                    choices=[s.name for s in SETTINGS + OPTIONAL], help="the settings to time (default: all but %s)"
                    % ", ".join(s.name for s in OPTIONAL))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--doc", type=Path, default=DOC)
    ap.add_argument("--render", action="store_true", help="only write --doc from the existing --out JSON")
    args = ap.parse_args(argv)
    if args.render:
        args.doc.write_text(markdown(json.loads(args.out.read_text())) + "\n")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    settings = [s for s in SETTINGS + OPTIONAL if s.name in args.settings]
    env = environment()
    ensure_data()  # extract and verify once, before the workers read the cases
    t0 = time.perf_counter()
    # a fresh Inductor cache: the compile time recorded is what a new training run pays
    with tempfile.TemporaryDirectory(prefix="inductor-") as cache, _environ({"TORCHINDUCTOR_CACHE_DIR": cache}):
        members = {name: bench_member(name, settings, args.warmup, args.steps, args.rounds) for name in args.members}
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "environment": env,
              "cases": CASES, "warmup": args.warmup, "steps": args.steps, "rounds": args.rounds,
              "total_s": round(time.perf_counter() - t0, 1), "loadavg_1min_end": round(os.getloadavg()[0], 2),
              "members": members}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.doc.write_text(markdown(result) + "\n")
    log.info("wrote %s and %s (%.0f s)", args.out, args.doc, result["total_s"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
