"""Compare two `hieseg predict` output folders voxel for voxel: masks must be identical, probability maps (when
both have them) are compared by their largest absolute difference. Used to record that a refactoring left the
shipped model's outputs unchanged (issue 12): `python scripts/compare_outputs.py BEFORE AFTER`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def _images(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*.mha")) + sorted(folder.rglob("*.nii.gz"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    args = p.parse_args(argv)
    before, after = _images(args.before), _images(args.after)
    missing = sorted(set(before) ^ set(after))
    masks_differ, worst_prob, n_masks = [], 0.0, 0
    for rel in sorted(set(before) & set(after)):
        a, b = sitk.ReadImage(str(before[rel])), sitk.ReadImage(str(after[rel]))
        va, vb = sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)
        same_geometry = (a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing()
                         and a.GetOrigin() == b.GetOrigin() and a.GetDirection() == b.GetDirection())
        if va.dtype == np.uint8:
            n_masks += 1
            if not same_geometry or not np.array_equal(va, vb):
                masks_differ.append(rel)
        else:
            worst_prob = max(worst_prob, float(np.abs(va.astype(np.float64) - vb).max()) if same_geometry else np.inf)
    print(f"{n_masks} masks compared: {len(masks_differ)} differ {masks_differ[:5]}; probability maps: max |diff| "
          f"{worst_prob:.3g}; files in only one folder: {missing[:5]}")
    return 1 if masks_differ or missing else 0


if __name__ == "__main__":
    sys.exit(main())
