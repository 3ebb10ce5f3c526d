"""Lesion copy-paste augmentation (CarveMix-style, Zhang et al., MICCAI 2021): real lesions of the training cases,
carved out with their own ADC / Z-ADC (and rule) values, pasted into the brain of a training patch from another
case, their voxels labelled lesion there. The small-lesion stratum has few examples per fold; this multiplies the
places and backgrounds in which the networks see them.

Pure numpy on a member's prepared grids (the channels are already normalised, background 0). The carved region is
the lesion dilated by one voxel, so the lesion's rim contrast moves with it and no hard edge of the recipient's
values is left right at the lesion boundary; the label is the lesion alone."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

MIN_VOXELS = 3  # smaller label components are single-voxel speckle, not lesions worth pasting
TRIES = 8  # random placements tried before a patch is left unchanged
MIN_BRAIN_FRACTION = 0.95  # of the carved region on the recipient's brain: lesions are not pasted into background


@dataclass(frozen=True)
class Lesion:
    donor: int  # index of the donor sample (a patch never receives its own case's lesions)
    values: np.ndarray  # (C, dz, dy, dx): the donor's channels over the carved region's bounding box
    region: np.ndarray  # (dz, dy, dx) bool: the lesion dilated by one voxel, the values that move
    mask: np.ndarray  # (dz, dy, dx) bool: the lesion, the voxels labelled 1 where it lands


def lesion_bank(images: list[np.ndarray], labels: list[np.ndarray], max_extent) -> list[Lesion]:
    """Every label component of the given (C, z, y, x) images / (z, y, x) labels whose carved bounding box fits
    ``max_extent`` (z, y, x) voxels, at least MIN_VOXELS voxels large. Components are 26-connected, as scored."""
    bank = []
    structure = np.ones((3, 3, 3), bool)
    for donor, (img, lab) in enumerate(zip(images, labels)):
        comps, n = ndimage.label(lab, structure)
        for k, sl in enumerate(ndimage.find_objects(comps), start=1):
            # one voxel of margin for the dilation, clipped at the volume's edge
            box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, dim)) for s, dim in zip(sl, lab.shape))
            mask = comps[box] == k
            if mask.sum() < MIN_VOXELS or any(b.stop - b.start > m for b, m in zip(box, max_extent)):
                continue
            # the rim: on the donor's brain, and not another lesion's voxels (they would move unlabelled)
            region = ndimage.binary_dilation(mask, structure) & (np.abs(img[(slice(None), *box)]).max(axis=0) > 0)
            region = (region & ~lab[box]) | mask
            bank.append(Lesion(donor, np.where(region, img[(slice(None), *box)], 0.0).astype(np.float32),
                               region, mask))
    return bank


def section(lesion: Lesion, rng: np.random.Generator) -> Lesion:
    """One axial slice of a lesion (for 2D members), drawn among the slices the lesion occupies."""
    zs = np.flatnonzero(lesion.mask.any(axis=(1, 2)))
    z = int(zs[rng.integers(len(zs))])
    return Lesion(lesion.donor, lesion.values[:, z], lesion.region[z], lesion.mask[z])


def paste(image: np.ndarray, label: np.ndarray, lesion: Lesion, rng: np.random.Generator) -> bool:
    """Paste ``lesion`` into the patch ``image`` (C, *spatial) / ``label`` (*spatial), in place, centred on a random
    brain voxel of the patch such that the carved region lies inside the patch and at least MIN_BRAIN_FRACTION of
    it on brain. Returns whether it was pasted (a patch with too little brain is left as it was)."""
    brain = np.abs(image).max(axis=0) > 0
    shape, ext = np.array(label.shape), np.array(lesion.region.shape)
    if (ext > shape).any() or not brain.any():
        return False
    candidates = np.argwhere(brain)
    n_region = lesion.region.sum()
    for _ in range(TRIES):
        centre = candidates[rng.integers(len(candidates))]
        corner = np.clip(centre - ext // 2, 0, shape - ext)
        box = tuple(slice(int(c), int(c + e)) for c, e in zip(corner, ext))
        if (brain[box] & lesion.region).sum() < MIN_BRAIN_FRACTION * n_region:
            continue
        view = image[(slice(None), *box)]
        view[:, lesion.region] = lesion.values[:, lesion.region]
        label[box][lesion.mask] = 1
        return True
    return False
