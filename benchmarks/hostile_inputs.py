"""Hostile inputs and faults of issue 13, built from a real case, run through the CLIs; prints the outcome matrix.

    PYTHONPATH=. .venv/bin/python benchmarks/hostile_inputs.py [--code DIR] [--only NAME,...] [--json out.json]

``--code`` runs another checkout's ``inference.py`` / ``hieseg`` (e.g. the commit before the fix, extracted with
``git archive``) against the same inputs, which are built with this checkout's code under ``.cache/hostile/``
(git-ignored: they are derived from the real cases). Each row records the exit code, the last error line, the
wall time, the peak RSS of the run and the files left in its output folder. Rows that need a small tmpfs (the
disk-full ones) need root; they are skipped otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

sitk.ProcessObject_SetGlobalWarningDisplay(False)  # metadata copied from FSL headers: noise
WORK = REPO / ".cache" / "hostile"
ADC_DIR, ZADC_DIR = "images/skull-stripped-adc-brain-mri", "images/z-score-adc"
CASE = "MGHNICU_014"


def real_pair() -> tuple[Path, Path]:
    from realdata import real_cases_dir

    root = real_cases_dir()
    return (root / "1ADC_ss" / f"{CASE}-VISIT_01-ADC_ss.mha",
            root / "2Z_ADC" / f"Zmap_{CASE}-VISIT_01-ADC_smooth2mm_clipped10.mha")


def gc_case(folder: Path, adc: sitk.Image, zadc: sitk.Image, name: str = "case.mha") -> Path:
    for sub, image in ((ADC_DIR, adc), (ZADC_DIR, zadc)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(folder / sub / name), useCompression=True)
    return folder


def huge(image: sitk.Image, size=(512, 512, 300), spacing=0.5) -> sitk.Image:
    """The image resampled (linear) onto a 0.5 mm isotropic 512 x 512 x 300 grid centred on its own centre."""
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    origin = centre - (np.array(size) - 1) / 2 * spacing
    return sitk.Resample(image, list(size), sitk.Transform(), sitk.sitkLinear, origin.tolist(), [spacing] * 3,
                         image.GetDirection(), 0.0, sitk.sitkFloat32)


def as_uint8(image: sitk.Image) -> sitk.Image:
    """Min-max rescaled to 0..255 and stored as uint8, as a careless PNG/DICOM round trip does."""
    return sitk.Cast(sitk.RescaleIntensity(image, 0, 255), sitk.sitkUInt8)


def sheared_nifti(image: sitk.Image, path: Path) -> None:
    """An uncompressed NIfTI whose sform has an in-plane shear (qform off), which ITK cannot represent."""
    sitk.WriteImage(image, str(path))
    data = bytearray(path.read_bytes())
    sx, sy, sz = image.GetSpacing()
    struct.pack_into("<hh", data, 252, 0, 2)  # qform_code 0, sform_code 2 (aligned)
    struct.pack_into("<4f", data, 280, sx, 0.4 * sy, 0.0, 0.0)
    struct.pack_into("<4f", data, 296, 0.0, sy, 0.0, 0.0)
    struct.pack_into("<4f", data, 312, 0.0, 0.0, sz, 0.0)
    path.write_bytes(bytes(data))


def build(work: Path) -> dict[str, dict]:
    """Every row: its input, how to run it and what the fix promises."""
    adc_path, zadc_path = real_pair()
    adc, zadc = sitk.ReadImage(str(adc_path)), sitk.ReadImage(str(zadc_path))
    rows: dict[str, dict] = {}

    def gc(name: str, a: sitk.Image = adc, z: sitk.Image = zadc, **kw) -> Path:
        folder = work / name / "in"
        if not folder.exists():
            gc_case(folder, a, z)
        rows[name] = {"input": folder, "mode": "gc", **kw}
        return folder

    gc("baseline_real_case")
    gc("disk_full_0_bytes_free", tmpfs_fill=256)
    gc("disk_full_4k_free", tmpfs_fill=255)
    for fill, label in ((256, "0_bytes_free"), (255, "4k_free")):  # the reproduction: the bundled sample
        rows[f"disk_full_{label}_sample"] = {"input": REPO / "test" / "input", "mode": "gc", "tmpfs_fill": fill}
    if not (work / "huge_512x512x300_0.5mm" / "in").exists():
        gc("huge_512x512x300_0.5mm", huge(adc), huge(zadc))
    rows["huge_512x512x300_0.5mm"] = {"input": work / "huge_512x512x300_0.5mm" / "in", "mode": "gc"}
    gc("uint8_pair", as_uint8(adc), as_uint8(zadc))
    gc("int16_zadc", adc, sitk.Cast(zadc, sitk.sitkInt16))

    def broken_adc(name: str, write) -> None:
        folder = gc(name)
        write(folder / ADC_DIR / "case.mha")

    raw = work / "raw.mha"
    sitk.WriteImage(adc, str(raw), useCompression=False)
    blob = raw.read_bytes()
    header_end = blob.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    broken_adc("empty_mha", lambda p: p.write_bytes(b""))
    broken_adc("truncated_mha", lambda p: p.write_bytes(blob[: len(blob) // 2]))
    broken_adc("header_only_mha", lambda p: p.write_bytes(blob[:header_end]))
    broken_adc("garbage_mha", lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)))
    broken_adc("missing_data_file_mha",
               lambda p: p.write_bytes(blob[:header_end].replace(b"ElementDataFile = LOCAL",
                                                                  b"ElementDataFile = case.raw")))
    huge_header = blob[:header_end].replace(b"DimSize = 128 128 23", b"DimSize = 1100 1000 1000")
    broken_adc("over_1e9_voxels_header", lambda p: p.write_bytes(huge_header))
    raw.unlink()

    folder = gc("sheared_nifti")
    (folder / ADC_DIR / "case.mha").unlink(missing_ok=True)
    sheared_nifti(adc, folder / ADC_DIR / "case.nii")

    # BONBID folder with one good case and the files that used to be skipped silently
    bonbid = work / "skipped_files_bonbid" / "in"
    if not bonbid.exists():
        for sub, src in (("1ADC_ss", adc_path), ("2Z_ADC", zadc_path)):
            (bonbid / sub).mkdir(parents=True)
            shutil.copy(src, bonbid / sub / src.name)
        (bonbid / "1ADC_ss" / "MGHNICU_999-VISIT_01-ADC_ss.mha").symlink_to("/nonexistent/target.mha")
        (bonbid / "1ADC_ss" / "MGHNICU_998-VISIT_01-ADC_ss.mha").mkdir()
        shutil.copy(adc_path, bonbid / "1ADC_ss" / "MGHNICU_997-VISIT_01-ADC_ss.nrrd")
        shutil.copy(adc_path, bonbid / "1ADC_ss" / ".MGHNICU_996-VISIT_01-ADC_ss.mha")
        (bonbid / "1ADC_ss" / "extra").mkdir()
        shutil.copy(adc_path, bonbid / "1ADC_ss" / "extra" / "MGHNICU_995-VISIT_01-ADC_ss.mha")
    rows["skipped_files_bonbid"] = {"input": bonbid, "mode": "predict"}

    gc("leftover_temp_in_output", pre_output={"images/hie-lesion-segmentation/.overlay.mha.k2j4h5g6.tmp.mha": b"x"})
    one = work / "bonbid_one_case"
    if not one.exists():
        for sub, src in (("1ADC_ss", adc_path), ("2Z_ADC", zadc_path)):
            (one / sub).mkdir(parents=True)
            shutil.copy(src, one / sub / src.name)
    rows["reports_symlink_out_of_output"] = {"input": one, "mode": "predict", "reports_symlink": True}
    rows["reports_is_a_file"] = {"input": one, "mode": "predict", "pre_output": {"reports": b"not a folder"}}
    return rows


def _files(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) + ("@" if p.is_symlink() else "")
                  for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def run_row(name: str, row: dict, code: Path, python: str, work: Path) -> dict:
    base = work / name / ("run-" + code.name)
    if base.exists():
        subprocess.run(["umount", str(base / "mnt")], capture_output=True)
        shutil.rmtree(base)
    base.mkdir(parents=True)
    mounted = None
    if "tmpfs_fill" in row:
        if os.geteuid() != 0:
            return {"name": name, "skipped": "needs root for the tmpfs"}
        mounted = base / "mnt"
        mounted.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mounted)], check=True)
        subprocess.run(["dd", "if=/dev/zero", f"of={mounted}/filler", "bs=4096", f"count={row['tmpfs_fill']}"],
                       capture_output=True)
        out = mounted / "o"
    else:
        out = base / "o"
    for rel, data in row.get("pre_output", {}).items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    if row.get("reports_symlink"):
        (base / "elsewhere").mkdir()
        out.mkdir(parents=True, exist_ok=True)
        (out / "reports").symlink_to(base / "elsewhere")
    if row["mode"] == "gc":
        cmd = [python, str(code / "inference.py"), "--input", str(row["input"]), "--output", str(out)]
    else:
        cmd = [python, "-m", "hieseg", "predict", str(row["input"]), str(out)]
    env = dict(os.environ, PYTHONPATH=str(code))
    t0 = time.perf_counter()
    cmd = ["/usr/bin/time", "-f", "MAXRSS_KB=%M"] + cmd  # peak RSS of this run alone
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=row.get("timeout", 150))
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # time(1) and the run under it
        stdout, stderr = proc.communicate()
        timed_out = True
    wall = time.perf_counter() - t0
    rss = [ln for ln in stderr.splitlines() if ln.startswith("MAXRSS_KB=")]
    rss_gib = round(int(rss[-1].split("=")[1]) / 2**20, 2) if rss else None
    lines = stderr.splitlines()
    errors = [ln for ln in lines if " ERROR " in ln]
    warnings = [ln for ln in lines if " WARNING " in ln and "running on CPU" not in ln]
    result = {"name": name, "exit": "timeout" if timed_out else proc.returncode, "seconds": round(wall, 1),
              "max_rss_gib": rss_gib, "errors": errors, "warnings": warnings,
              "model_loaded": any("members loaded" in ln for ln in lines),
              "files_left": _files(out),
              "elsewhere": _files(base / "elsewhere") if row.get("reports_symlink") else None,
              "stdout": stdout.strip().splitlines()[-1:] if stdout.strip() else []}
    reports = sorted(out.glob("hieseg-report.json")) + sorted(out.glob("reports/*.json"))
    if reports:
        report = json.loads(reports[0].read_text())
        result["lesion_ml"] = report.get("lesion_volume_ml")
        result["domain"] = report.get("domain")
    if mounted is not None:
        subprocess.run(["umount", str(mounted)], check=False)
    return result


def _outcome(r: dict | None) -> str:
    if r is None:
        return "-"
    if "skipped" in r:
        return "skipped: " + r["skipped"]
    parts = [f"exit {r['exit']}", f"{r['seconds']} s", f"{r['max_rss_gib']} GiB"]
    if r.get("lesion_ml") is not None:
        parts.append(f"lesion {r['lesion_ml']} mL")
    if r["errors"]:
        parts.append("error: " + r["errors"][-1].split(" ERROR ", 1)[-1].strip()[:200])
    if r["warnings"]:
        parts.append(f"{len(r['warnings'])} warning(s): " + r["warnings"][0].split(" WARNING ", 1)[-1].strip()[:160])
    parts.append("model loaded" if r.get("model_loaded") else "model not loaded")
    parts.append("left: " + (", ".join(f.split("/")[-1] for f in r["files_left"]) or "nothing"))
    if r.get("elsewhere"):
        parts.append("written through link: " + ", ".join(r["elsewhere"]))
    return "; ".join(parts).replace("|", "/")


def compare(before: list[dict], after: list[dict]) -> str:
    """A markdown table of two runs of the matrix, row by row."""
    b, a = {r["name"]: r for r in before}, {r["name"]: r for r in after}
    lines = ["| case | before | after |", "|---|---|---|"]
    for name in dict.fromkeys([*b, *a]):
        lines.append(f"| {name} | {_outcome(b.get(name))} | {_outcome(a.get(name))} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose CLIs to run (default: this one)")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--only", default="", help="comma-separated row names")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--compare", type=Path, nargs="+", metavar="JSON",
                        help="print a before/after table of earlier --json files (BEFORE... AFTER) and exit")
    args = parser.parse_args()
    if args.compare:
        runs = [json.loads(p.read_text()) for p in args.compare]
        print(compare([r for run in runs[:-1] for r in run], runs[-1]))
        return
    rows = build(WORK)
    names = [n for n in rows if not args.only or n in args.only.split(",")]
    results = []
    for name in names:
        result = run_row(name, rows[name], args.code.resolve(), args.python, WORK)
        results.append(result)
        print(json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
