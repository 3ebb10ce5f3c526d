"""Training one member on one fold: patch sampling with foreground oversampling, augmentation, MONAI losses,
a checkpoint every CKPT_EVERY iterations that a restarted run resumes from exactly."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from hieseg.engine import preprocess
from hieseg.engine.ensemble import Runner, member_probability
from hieseg.engine.manifest import Member

from . import carvemix, config
from .config import CKPT_EVERY, TTA_FLIPS
from .data import RawCase
from .nets import build


@dataclass
class Sample:
    case_id: str
    image: np.ndarray  # (C, z, y, x) at the member's spacing
    label: np.ndarray  # (z, y, x) bool at the member's spacing
    prepared: preprocess.Prepared
    confounders: np.ndarray  # (z, y, x) bool: Z-ADC < -2 in the brain but not lesion (the rule's false positives)


def prepare_case(case: RawCase, channels: list[dict], target_spacing, crop_margin_mm: float) -> Sample:
    """Exactly the runtime's preprocessing (hieseg.engine.preprocess.prepare), plus the label on the same grid and the
    rule's false positives there (for hard-negative sampling; from the training case's own label only)."""
    crop = preprocess.crop_to_brain(case.adc, case.spacing_zyx, crop_margin_mm)
    # the rule rides along as one more channel: ADC and Z-ADC are resampled once for both
    both = preprocess.prepare(case.adc, case.zadc, case.spacing_zyx, [*channels, config.ZADC_RULE], target_spacing,
                              crop)
    prep = replace(both, image=both.image[:-1])
    label = preprocess.resample_mask(case.label[crop], prep.image.shape[1:])
    return Sample(case.case_id, prep.image, label, prep, (both.image[-1] > 0.5) & ~label)


# ---------------------------------------------------------------- sampling


def _pad_to(image: np.ndarray, label: np.ndarray, patch) -> tuple[np.ndarray, np.ndarray]:
    spatial = image.shape[1:]
    need = [max(p - s, 0) for p, s in zip(patch, spatial[-len(patch):])]
    if not any(need):
        return image, label
    lead = len(spatial) - len(patch)
    pads = [(0, 0)] * lead + [(n // 2, n - n // 2) for n in need]
    return np.pad(image, [(0, 0)] + pads), np.pad(label, pads)


class Sampler:
    """Random patches (3d) or slice crops (2d); a third of them centred on a lesion voxel (nnU-Net style) and,
    with ``hard_negative_fraction``, that share centred on a voxel where the Z-ADC < -2 rule fires outside the
    lesions (the low-ADC look-alikes behind most false-positive components)."""

    def __init__(self, samples: list[Sample], kind: str, patch, rng: np.random.Generator, fg_fraction: float = 1 / 3,
                 hard_negative_fraction: float = 0.0, carvemix_fraction: float = 0.0):
        self.kind, self.patch, self.rng, self.fg = kind, list(patch), rng, fg_fraction
        self.hn, self.cm = hard_negative_fraction, carvemix_fraction
        self.items = []
        for s in samples:
            img, lab = _pad_to(s.image, s.label, self.patch)
            fg = np.argwhere(lab)
            neg = np.argwhere(_pad_to(s.image[:1], s.confounders, self.patch)[1]) if self.hn > 0 else fg[:0]
            brain_slices = np.flatnonzero(np.abs(img[0]).reshape(img.shape[1], -1).max(axis=1) > 0)
            self.items.append((img, lab, fg, neg, brain_slices))
        # lesions to paste: those whose carved box fits half a patch in-plane (the small ones) and, for 3D patches,
        # the patch's depth (a 2D patch takes one section of any lesion)
        depth = max(s.image.shape[1] for s in samples) if kind == "2d" else self.patch[0]
        extent = [depth, *(p // 2 for p in self.patch[-2:])]
        self.bank = carvemix.lesion_bank([s.image for s in samples], [s.label for s in samples], extent) \
            if self.cm > 0 else []

    def _carve(self, x: np.ndarray, y: np.ndarray, recipient: int) -> tuple[np.ndarray, np.ndarray]:
        """With probability carvemix_fraction, the patch with another case's lesion pasted in (copies: the
        patch is a view of the stored case). No random draw at all without lesion copy-paste (old runs resume
        with the same draws)."""
        if self.cm <= 0 or self.rng.random() >= self.cm:
            return x, y
        donors = [les for les in self.bank if les.donor != recipient]
        if not donors:
            return x, y
        lesion = donors[self.rng.integers(len(donors))]
        if self.kind == "2d":
            lesion = carvemix.section(lesion, self.rng)
        x, y = x.copy(), y.copy()
        carvemix.paste(x, y[0], lesion, self.rng)
        return x, y

    def _corner(self, shape, centre):
        return [int(np.clip(c - p // 2, 0, n - p)) for c, p, n in zip(centre, self.patch, shape)]

    def _centre_pool(self, fg: np.ndarray, neg: np.ndarray) -> np.ndarray | None:
        """Voxels to centre the next patch on (lesion or hard negative), or None for a random patch. Without hard
        negatives the random draws are exactly those of the plain sampler (resumed runs stay reproducible)."""
        if len(fg) == 0 and (self.hn <= 0 or len(neg) == 0):
            return None
        r = self.rng.random()
        if len(fg) > 0 and r < self.fg:
            return fg
        if self.hn > 0 and len(neg) > 0 and self.fg <= r < self.fg + self.hn:
            return neg
        return None

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for _ in range(size):
            index = self.rng.integers(len(self.items))
            img, lab, fg, neg, brain_slices = self.items[index]
            pool = self._centre_pool(fg, neg)
            if self.kind == "3d":
                shape = lab.shape
                if pool is not None:
                    centre = pool[self.rng.integers(len(pool))]
                else:
                    centre = [self.rng.integers(n) for n in shape]
                c = self._corner(shape, centre)
                sl = tuple(slice(a, a + p) for a, p in zip(c, self.patch))
                patch_x, patch_y = self._carve(img[(slice(None),) + sl], lab[sl][None], index)
                xs.append(patch_x)
                ys.append(patch_y)
            else:
                if pool is not None:
                    z, y, x = pool[self.rng.integers(len(pool))]
                else:
                    slices = brain_slices if len(brain_slices) else np.arange(lab.shape[0])
                    z = slices[self.rng.integers(len(slices))]
                    y, x = self.rng.integers(lab.shape[1]), self.rng.integers(lab.shape[2])
                c = self._corner(lab.shape[1:], (y, x))
                sl = (slice(c[0], c[0] + self.patch[0]), slice(c[1], c[1] + self.patch[1]))
                patch_x, patch_y = self._carve(img[:, z][(slice(None),) + sl], lab[z][sl][None], index)
                xs.append(patch_x)
                ys.append(patch_y)
        return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)


# ---------------------------------------------------------------- augmentation (torch, on the batch)


def augment(x: torch.Tensor, y: torch.Tensor, n_intensity: int, gen: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips, small in-plane affine, gamma, noise, blur and anisotropy (low-resolution simulation).

    ``x``: (B, C, [z,] y, x); intensity augmentation touches the first ``n_intensity`` channels only (the binary
    prior channel is moved with the geometry but not re-valued)."""
    def rand(*shape):
        return torch.rand(*shape, generator=gen)

    b = x.shape[0]
    dims = x.ndim - 2
    # left-right flip per sample
    flip = rand(b) < 0.5
    if flip.any():
        x[flip] = torch.flip(x[flip], dims=[-1])
        y[flip] = torch.flip(y[flip], dims=[-1])
    # in-plane rotation +-15 deg and scale 0.85-1.15, p = 0.3 per sample
    do = rand(b) < 0.3
    if do.any():
        n = int(do.sum())
        ang = (rand(n) * 2 - 1) * math.radians(15)
        scale = 0.85 + 0.3 * rand(n)
        cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
        if dims == 2:
            theta = torch.zeros(n, 2, 3)
            theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        else:
            theta = torch.zeros(n, 3, 4)
            theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
            theta[:, 2, 2] = 1.0
        grid = F.affine_grid(theta, list(x[do].shape), align_corners=False)
        x[do] = F.grid_sample(x[do], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        y[do] = (F.grid_sample(y[do], grid, mode="bilinear", padding_mode="zeros", align_corners=False) >= 0.5).float()
        if x.shape[1] > n_intensity:  # keep the prior binary
            x[do, n_intensity:] = (x[do, n_intensity:] >= 0.5).float()
    xi = x[:, :n_intensity]
    # gamma on the min-max normalised channel, p = 0.3
    for i in torch.nonzero(rand(b) < 0.3).flatten().tolist():
        v = xi[i]
        lo = v.amin(dim=tuple(range(1, v.ndim)), keepdim=True)
        hi = v.amax(dim=tuple(range(1, v.ndim)), keepdim=True)
        g = 0.7 + 0.8 * float(rand(1))
        xi[i] = ((v - lo) / (hi - lo + 1e-6)).clamp(0, 1) ** g * (hi - lo) + lo
    # gaussian noise, p = 0.15
    noisy = rand(b) < 0.15
    if noisy.any():
        xi[noisy] += torch.randn(xi[noisy].shape, generator=gen) * (0.1 * rand(1).item())
    # in-plane gaussian blur, p = 0.1
    for i in torch.nonzero(rand(b) < 0.1).flatten().tolist():
        sigma = 0.5 + 0.5 * float(rand(1))
        k = torch.exp(-0.5 * (torch.arange(-2, 3, dtype=torch.float32) / sigma) ** 2)
        k = (k / k.sum())
        c = xi.shape[1]
        v = xi[i:i + 1]
        flat = v.reshape(1, -1, *v.shape[-2:]) if dims == 3 else v
        ch = flat.shape[1]
        flat = F.conv2d(F.pad(flat, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5).repeat(ch, 1, 1, 1), groups=ch)
        flat = F.conv2d(F.pad(flat, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1).repeat(ch, 1, 1, 1), groups=ch)
        xi[i:i + 1] = flat.reshape(1, c, *v.shape[2:])
    # anisotropy / low resolution: in-plane down by 1.5-2x and back up, p = 0.15
    for i in torch.nonzero(rand(b) < 0.15).flatten().tolist():
        f = 1.5 + 0.5 * float(rand(1))
        v = xi[i:i + 1]
        size = v.shape[2:]
        if dims == 3:
            small = [size[0], max(int(size[1] / f), 4), max(int(size[2] / f), 4)]
            xi[i:i + 1] = F.interpolate(F.interpolate(v, size=small, mode="nearest"), size=list(size), mode="trilinear")
        else:
            small = [max(int(size[0] / f), 4), max(int(size[1] / f), 4)]
            xi[i:i + 1] = F.interpolate(F.interpolate(v, size=small, mode="nearest"), size=list(size), mode="bilinear")
    x[:, :n_intensity] = xi
    return x, y


# ---------------------------------------------------------------- losses (MONAI)


class Loss:
    def __init__(self, name: str, iterations: int):
        from monai.losses import DiceFocalLoss, FocalLoss, HausdorffDTLoss, LogHausdorffDTLoss, TverskyLoss

        self.name, self.iterations = name, max(iterations, 1)
        if name == "tlhf":  # SPARSeg: Tversky(0.3, 0.7) x1.5 + LogHausdorffDT x2 + Focal(gamma 3) x ramp 2 -> 4
            self.tversky = TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7, batch=True)
            self.hd = LogHausdorffDTLoss(sigmoid=True, include_background=True)
            self.focal = FocalLoss(gamma=3.0)
        elif name == "tvhd":  # Tversky + HausdorffDT
            self.tversky = TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7, batch=True)
            self.hd = HausdorffDTLoss(sigmoid=True, include_background=True)
        elif name == "tvfocal":  # precision-weighted Tversky (MONAI: alpha weighs false positives) + Focal(gamma 2)
            self.tversky = TverskyLoss(sigmoid=True, alpha=0.7, beta=0.3, batch=True)
            self.focal = FocalLoss(gamma=2.0)
        elif name == "dicefocal":
            self.df = DiceFocalLoss(sigmoid=True, batch=True)
        else:
            raise ValueError(f"unknown loss {name!r}")

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, iteration: int) -> torch.Tensor:
        if self.name == "tlhf":
            ramp = 2.0 + 2.0 * min(iteration / self.iterations, 1.0)
            return (1.5 * self.tversky(logits, target) + 2.0 * self.hd(logits, target)
                    + ramp * self.focal(logits, target))
        if self.name == "tvhd":
            return self.tversky(logits, target) + self.hd(logits, target)
        if self.name == "tvfocal":
            return self.tversky(logits, target) + self.focal(logits, target)
        return self.df(logits, target)


# ---------------------------------------------------------------- inference (mimics the runtime)


def torch_predictor(net: torch.nn.Module, device: str | torch.device = "cpu") -> Callable[[np.ndarray], np.ndarray]:
    """``batch -> probabilities`` of a torch network: the predictor the runtime's ensemble loop runs."""
    def fn(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(net(torch.from_numpy(batch).to(device))).float().cpu().numpy()
    return fn


def as_member(name: str, spec: dict, channels: list[dict], tta_flips=TTA_FLIPS, weight: float = 1.0) -> Member:
    """The runtime's description of a member spec (what export writes to the manifest, minus the file), so that
    training runs its networks through hieseg.engine.ensemble exactly as the runtime will."""
    e = config.member_entry(spec, channels, tta_flips, weight)
    return Member(name=name, path=Path(), sha256="", kind=e["kind"], channels=tuple(e["channels"]),
                  target_spacing_zyx=tuple(e["target_spacing_zyx"]), patch_size=tuple(e["patch_size"]),
                  divisible_by=tuple(e["divisible_by"]), batch_size=e["batch_size"],
                  tta_flips=tuple(tuple(f) for f in e["tta_flips"]), weight=e["weight"])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * float((a & b).sum()) / float(s)


# ---------------------------------------------------------------- the loop


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def memory_format(kind: str, channels_last: bool) -> torch.memory_format:
    """The memory order of a member's weights and batches: channels-last (NHWC / NDHWC) or torch's default."""
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last_3d if kind == "3d" else torch.channels_last


def next_batch(sampler: Sampler, size: int, n_intensity: int, gen: torch.Generator, dev: torch.device,
               fmt: torch.memory_format = torch.contiguous_format) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented training batch on ``dev``, the images in ``fmt`` memory order."""
    x, y = sampler.batch(size)
    x, y = augment(torch.from_numpy(x), torch.from_numpy(y), n_intensity, gen)
    return x.to(dev, memory_format=fmt, non_blocking=True), y.to(dev, non_blocking=True)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX; torch's own test). Elsewhere
    bfloat16 autocast is emulated: one 3D convolution step took 129 s against 1.1 s in float32 on an AVX2 AMD EPYC
    (2 threads), so ``--bf16`` there would be two orders of magnitude slower, not 2-3x faster."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn, x: torch.Tensor, y: torch.Tensor,
               iteration: int, amp: bool) -> torch.Tensor:
    """One optimisation step; returns the detached loss. With ``amp`` the forward pass runs in bfloat16 autocast;
    the loss, the gradients and the weights stay float32."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = net(x)
    loss = loss_fn(logits.float(), y, iteration)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
    opt.step()
    return loss.detach()


# A time-budgeted run times its steps from WARMUP_ITERATIONS on (cudnn autotuning, other processes still starting)
# and fits its schedule at each FIT_AT iteration: the later fit sees the steady-state rate.
WARMUP_ITERATIONS = 20
FIT_AT = (60, 300)


def train_member(spec: dict, train: list[Sample], val: list[Sample], out_dir: Path, loss_name: str,
                 seed: int, log=print, device: str = "cpu", amp: bool = False, eval_every: int = CKPT_EVERY,
                 time_budget_s: float | None = None, channels_last: bool = False) -> torch.nn.Module:
    """Train (or resume) one member; returns the final network. ``out_dir`` holds last.pt, final.pt, curve.json.

    ``device``/``amp``: where the steps run and whether the forward pass runs in bfloat16 autocast (the loss and
    the weights stay float32, so the exported ONNX is float32 as on the CPU). ``time_budget_s``: at each FIT_AT
    iteration the schedule is shortened, if needed, so that the run ends within the budget (a lent GPU's minutes
    are fixed; a cut-off cosine would leave the network at a high learning rate); past 97 % of it the run stops.
    The iterations actually run are recorded in final.pt's spec and in the curve.

    ``channels_last``: weights and batches in channels-last memory order (faster oneDNN bf16 convolutions on a CPU:
    docs/train_speed.md). The arithmetic is the same and so are the checkpoints: final.pt holds plain contiguous
    float32 tensors under the network's own parameter names, loadable into a freshly built network as before."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "final.pt"
    dev = torch.device(device)
    n_ch = train[0].image.shape[0]
    net = build(spec["kind"], n_ch, spec["arch"]).to(dev)
    if final.is_file():
        net.load_state_dict(torch.load(final, map_location=dev)["net"])
        net.eval()
        return net
    plan = {"iterations": int(spec["iterations"])}
    opt = torch.optim.AdamW(net.parameters(), lr=spec["lr"], weight_decay=1e-4)
    warm = min(50, max(plan["iterations"] // 10, 1))

    def lr_factor(i: int) -> float:  # reads the plan at every step: a fitted schedule keeps its cosine shape
        if i < warm:
            return (i + 1) / warm
        progress = min(i - warm, plan["iterations"] - warm) / max(plan["iterations"] - warm, 1)
        return 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    start, curve = 0, {"iteration": [], "train_loss": [], "val_dice": [], "seconds": []}
    budgeted = time_budget_s is not None
    last = out_dir / "last.pt"
    if last.is_file():
        state = torch.load(last, map_location=dev, weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        rng.bit_generator.state = state["rng"]
        gen.set_state(state["gen"])
        start, curve = state["iteration"], state["curve"]
        plan["iterations"] = state.get("planned_iterations", plan["iterations"])
        log(f"  resumed {out_dir.name} at iteration {start}/{plan['iterations']}")
    sampler = Sampler(train, spec["kind"], spec["train_patch"], rng,
                      hard_negative_fraction=spec.get("hard_negative_fraction", 0.0),
                      carvemix_fraction=spec.get("carvemix_fraction", 0.0))
    loss_fn = Loss(loss_name, plan["iterations"])
    n_int = sum(1 for s in spec["sources"] if s != "prior")
    fmt = memory_format(spec["kind"], channels_last)
    net = net.to(memory_format=fmt)
    net.train()
    running, t0, t_begin = [], time.time(), time.time()
    t_warm = None
    it = start
    while it < plan["iterations"]:
        x, y = next_batch(sampler, spec["batch"], n_int, gen, dev, fmt)
        running.append(train_step(net, opt, loss_fn, x, y, it, amp))
        sched.step()
        it += 1
        if budgeted:
            now = time.time()
            if it - start == WARMUP_ITERATIONS:
                t_warm = now
            elif t_warm is not None and it - start in FIT_AT:
                rate = (it - start - WARMUP_ITERATIONS) / (now - t_warm)
                # 0.8: validation passes and the final save come out of the same budget
                fit = it + int(rate * (0.8 * time_budget_s - (now - t_begin)))
                if fit < plan["iterations"]:
                    log(f"  {out_dir.parent.name}/{out_dir.name}: {rate:.1f} it/s, schedule fitted to the "
                        f"{time_budget_s:.0f} s budget: {fit} of {plan['iterations']} iterations")
                    plan["iterations"] = max(fit, it + 1)
            if now - t_begin > 0.97 * time_budget_s and it < plan["iterations"]:
                log(f"  {out_dir.parent.name}/{out_dir.name}: budget spent, stopping at iteration {it} of "
                    f"{plan['iterations']}")
                plan["iterations"] = it
        if it % eval_every == 0 or it == plan["iterations"]:
            net.eval()
            runner = Runner(as_member(out_dir.parent.name, spec, []), torch_predictor(net, dev), spec["infer_batch"])
            vd = [_dice(member_probability(runner, s.image, [()]) >= 0.5, s.label) for s in val]
            net.train()
            curve["iteration"].append(it)
            curve["train_loss"].append(float(torch.stack(running).mean()) if running else float("nan"))
            curve["val_dice"].append(float(np.mean(vd)) if vd else float("nan"))
            curve["seconds"].append(time.time() - t0)
            log(f"  {out_dir.parent.name}/{out_dir.name} it {it}/{plan['iterations']} "
                f"loss {curve['train_loss'][-1]:.4f} "
                f"val dice@0.5 {curve['val_dice'][-1]:.3f} ({time.time() - t0:.0f}s)")
            running, t0 = [], time.time()
            _atomic_save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                          "rng": rng.bit_generator.state, "gen": gen.get_state(), "iteration": it,
                          "planned_iterations": plan["iterations"], "curve": curve}, last)
    net.eval()
    (out_dir / "curve.json").write_text(json.dumps(curve) + "\n")
    cpu_state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    _atomic_save({"net": cpu_state, "spec": {**spec, "iterations": plan["iterations"]}, "loss": loss_name,
                  "curve": curve, "device": str(dev), "amp": amp, "channels_last": channels_last}, final)
    return net
