"""Every choice of the training run in one place: members, intensity transforms, losses, budgets."""

from __future__ import annotations

import copy

import numpy as np

CROP_MARGIN_MM = 8.0
TTA_FLIPS = [[], [2]]  # identity and a left-right flip of the (z, y, x) volume

MEMBERS = {
    # 3D DynUNet on [ADC, Z-ADC] at a fixed in-plane spacing (the finest common native one), native slices.
    "unet3d": {
        "kind": "3d",
        "sources": ["adc", "zadc"],
        "target_spacing_zyx": [None, 1.375, 1.375],
        "arch": {"filters": [16, 32, 48, 96]},
        "train_patch": [16, 80, 80],
        "batch": 2,
        "iterations": 1600,  # 800 left it undertrained (RESULTS.md): ~11 min per fold on 2 cores
        "lr": 2e-3,
        "patch_size": [64, 256, 256],  # runtime sliding-window tile: a whole cropped brain fits in one
        "divisible_by": [4, 8, 8],
        "infer_batch": 1,
    },
    # 2D UNet++ with scSE on axial slices, [ADC, Z-ADC, Z-ADC < -2], native grid.
    "unetpp2d": {
        "kind": "2d",
        "sources": ["adc", "zadc", "prior"],
        "target_spacing_zyx": [None, None, None],
        "arch": {"features": [16, 32, 48, 64, 128, 16]},
        "train_patch": [80, 80],
        "batch": 16,
        "iterations": 1200,
        "lr": 2e-3,
        "patch_size": [256, 256],
        "divisible_by": [16, 16],
        "infer_batch": 16,
    },
}

# A lent GPU's schedule (training/device_cv.py): 10x the CPU schedule's samples (batch x iterations), in bigger
# batches since a GPU step of these small networks costs about the same for 2 or 8 patches.
GPU_SCHEDULE = {
    "unet3d": {"batch": 4, "iterations": 8000},  # CPU: 2 x 1600
    "unetpp2d": {"batch": 32, "iterations": 6000},  # CPU: 16 x 1200
}

LOSSES = ("tlhf", "tvhd", "tvfocal", "dicefocal")
INTENSITIES = ("stats", "sparseg")
DEFAULT_LOSS = "dicefocal"  # won the fold-0 proxy (RESULTS.md)
DEFAULT_INTENSITY = "stats"
CKPT_EVERY = 100  # iterations per "epoch": checkpoint + learning-curve point


def quick(members: dict) -> dict:
    """--quick: same code path, a handful of iterations."""
    out = copy.deepcopy(members)
    for m in out.values():
        m["iterations"] = 4
        m["batch"] = 2
    return out


def member_entry(spec: dict, channels: list[dict], tta_flips, weight: float) -> dict:
    """How the runtime runs a member (its manifest entry without name and file): one place for training's
    torch inference (train.as_member) and the exported manifest (export.py)."""
    return {"kind": spec["kind"], "channels": channels, "target_spacing_zyx": spec["target_spacing_zyx"],
            "patch_size": spec["patch_size"], "divisible_by": spec["divisible_by"],
            "batch_size": spec["infer_batch"], "tta_flips": tta_flips, "weight": weight}


def brain_stats(cases) -> dict:
    """Mean / std of ADC and Z-ADC over brain voxels (ADC > 0) of the given cases."""
    adc = np.concatenate([c.adc[c.adc > 0] for c in cases])
    zadc = np.concatenate([c.zadc[c.adc > 0] for c in cases])
    return {"adc": (float(adc.mean()), float(adc.std())), "zadc": (float(zadc.mean()), float(zadc.std()))}


# The classic rule as a channel: Z-ADC < -2 inside the brain (the "prior" input; hard negatives are where it fires
# outside the lesions).
ZADC_RULE = {"source": "zadc", "transform": {"type": "below", "threshold": -2.0}}


def channel_specs(sources: list[str], intensity: str, stats: dict) -> list[dict]:
    """Manifest channel entries (hieseg.engine.preprocess transforms) for a member's sources."""
    specs = []
    for src in sources:
        if src == "prior":
            specs.append(copy.deepcopy(ZADC_RULE))
        elif intensity == "sparseg":
            low, high = (0.0, 3400.0) if src == "adc" else (-10.0, 10.0)
            specs.append({"source": src, "transform": {"type": "clip_scale", "low": low, "high": high}})
        elif intensity == "stats":
            mean, std = stats[src]
            specs.append({"source": src, "transform": {"type": "zscore", "mean": round(mean, 4),
                                                       "std": round(std, 4), "clip": 5.0}})
        else:
            raise ValueError(f"unknown intensity transform {intensity!r}")
    return specs
