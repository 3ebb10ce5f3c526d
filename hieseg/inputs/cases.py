"""Finding cases in the input layouts hieseg understands, and naming their outputs.

Layouts:
- Grand Challenge: one file in each of the two input sockets' folders, ``IN/<GC_ADC_DIR>/`` and ``IN/<GC_ZADC_DIR>/``,
  or in the folders that ``IN/inputs.json`` lists for the two sockets (gc_interface names both).
- BONBID release: ``IN/1ADC_ss/MGHNICU_<id>-VISIT_01-ADC_ss.<ext>`` with
  ``IN/2Z_ADC/Zmap_MGHNICU_<id>-VISIT_01-ADC_smooth2mm_clipped10.<ext>``.
- An explicit pair given on the command line.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from hieseg.errors import InputError
from hieseg.inputs.gc_interface import (
    ADC_SOCKET,
    GC_ADC_DIR,
    GC_OUTPUT,
    GC_ZADC_DIR,
    INPUTS_JSON,
    ZADC_SOCKET,
    read_inputs_json,
    socket_file,
)
from hieseg.inputs.io import IMAGE_SUFFIXES, strip_suffix
from hieseg.inputs.naming import mask_stem
from hieseg.inputs.scan import image_files

BONBID_ADC_DIR = "1ADC_ss"
BONBID_ZADC_DIR = "2Z_ADC"
BONBID_LABEL_DIR = "3LABEL"

CASE_LIST_COLUMNS = ("case_id", "adc", "zadc")
_SAFE_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

_CASE_ID = re.compile(r"(MGHNICU_\d+)")
_VISIT = re.compile(r"(MGHNICU_\d+-VISIT_\d+)")


@dataclass(frozen=True)
class Case:
    """One ADC / Z-ADC pair, the stem its outputs are named by, and whether it came in Grand Challenge's layout
    (its outputs then go to Grand Challenge's paths: see outputs.case_outputs)."""

    case_id: str
    adc: Path
    zadc: Path
    output_stem: str  # e.g. 'MGHNICU_014-VISIT_01_lesion' (pairs with the dataset's labels) or 'overlay'
    grand_challenge: bool = False


def case_id_of(path: str | Path) -> str:
    """``MGHNICU_<id>`` when the name holds one, otherwise the file name without its image suffix."""
    name = Path(path).name
    match = _CASE_ID.search(name)
    return match.group(1) if match else strip_suffix(name)


def _single(folder: Path, what: str) -> Path:
    files = image_files(folder)
    if not files:
        raise InputError(folder, f"no {what} image found (expected one of {', '.join(IMAGE_SUFFIXES)})")
    if len(files) > 1:
        raise InputError(folder, f"expected one {what} image, found {len(files)}: "
                                 + ", ".join(p.name for p in files))
    return files[0]


def is_grand_challenge(root: Path) -> bool:
    return (root / INPUTS_JSON).is_file() or (root / GC_ADC_DIR).is_dir() or (root / GC_ZADC_DIR).is_dir()


def is_bonbid(root: Path) -> bool:
    return (root / BONBID_ADC_DIR).is_dir() or (root / BONBID_ZADC_DIR).is_dir()


def grand_challenge_case(root: Path) -> Case:
    """The case of a Grand Challenge input folder: the files inputs.json lists when present, else the folders."""
    sockets = read_inputs_json(root)
    if sockets is not None:
        adc = socket_file(sockets[ADC_SOCKET], image_files)
        zadc = socket_file(sockets[ZADC_SOCKET], image_files)
    else:
        adc = _single(root / GC_ADC_DIR, "skull-stripped ADC")
        zadc = _single(root / GC_ZADC_DIR, "Z-ADC")
    return Case(case_id_of(adc), adc, zadc, GC_OUTPUT.stem, grand_challenge=True)


def bonbid_cases(root: Path) -> list[Case]:
    """Pair ADC and Z-ADC files of the BONBID release by ``MGHNICU_<id>-VISIT_<n>``."""
    adc_dir, zadc_dir = root / BONBID_ADC_DIR, root / BONBID_ZADC_DIR
    if not adc_dir.is_dir():
        raise InputError(adc_dir, "ADC folder missing")
    if not zadc_dir.is_dir():
        raise InputError(zadc_dir, "Z-ADC folder missing")
    zadc_by_key: dict[str, list[Path]] = {}
    for z in image_files(zadc_dir):
        zadc_by_key.setdefault(_visit_key(z), []).append(z)
    cases = []
    for adc in image_files(adc_dir):
        key = _visit_key(adc)
        matches = zadc_by_key.get(key, [])
        if not matches:
            raise InputError(adc, f"no Z-ADC map for {key} in {zadc_dir}")
        if len(matches) > 1:
            raise InputError(adc, f"several Z-ADC maps for {key}: " + ", ".join(p.name for p in matches))
        cases.append(Case(case_id_of(adc), adc, matches[0], mask_stem(key)))
    if not cases:
        raise InputError(adc_dir, "no ADC images found")
    return cases


def _visit_key(path: Path) -> str:
    match = _VISIT.search(path.name)
    return match.group(1) if match else strip_suffix(path)


def find_cases(root: str | Path) -> list[Case]:
    """All cases under ``root`` in the Grand Challenge or BONBID layout."""
    root = Path(root)
    if not root.exists():
        raise InputError(root, "input folder not found")
    if is_grand_challenge(root):
        return [grand_challenge_case(root)]
    if is_bonbid(root):
        return bonbid_cases(root)
    raise InputError(root, f"unrecognised input layout: expected {GC_ADC_DIR}/ and {GC_ZADC_DIR}/ "
                           f"(Grand Challenge) or {BONBID_ADC_DIR}/ and {BONBID_ZADC_DIR}/ (BONBID)")


def pair_case(adc: str | Path, zadc: str | Path) -> Case:
    """An explicit ADC / Z-ADC pair; outputs are named after the case id of the ADC file."""
    adc, zadc = Path(adc), Path(zadc)
    return Case(case_id_of(adc), adc, zadc, mask_stem(_visit_key(adc)))


def is_case_list(path: Path) -> bool:
    return path.suffix.lower() == ".csv" and path.is_file()


def read_case_list(path: str | Path) -> list[Case]:
    """Cases of a CSV with the header ``case_id,adc,zadc``; relative image paths are relative to the CSV's folder.

    Each case's outputs are named by its case_id, so ids must be unique and usable as file names.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's byte-order mark
            reader = csv.DictReader(fh)
            header = [name.strip() for name in reader.fieldnames or []]
            reader.fieldnames = header
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"cannot read the case list ({exc})") from None
    missing = [c for c in CASE_LIST_COLUMNS if c not in header]
    if missing:
        raise InputError(path, f"case list needs the columns {','.join(CASE_LIST_COLUMNS)}; missing "
                               + ", ".join(missing))
    cases, seen = [], set()
    for line, row in enumerate(rows, start=2):
        values = {c: (row.get(c) or "").strip() for c in CASE_LIST_COLUMNS}
        empty = [c for c, v in values.items() if not v]
        if empty:
            raise InputError(path, f"line {line}: empty {', '.join(empty)}")
        case_id = values["case_id"]
        if not _SAFE_CASE_ID.fullmatch(case_id):
            raise InputError(path, f"line {line}: case_id {case_id!r} is not a usable file name "
                                   "(letters, digits, '.', '_', '-')")
        if case_id in seen:
            raise InputError(path, f"line {line}: case_id {case_id!r} appears twice")
        seen.add(case_id)
        adc, zadc = (_resolve(values[c], path.parent) for c in ("adc", "zadc"))
        cases.append(Case(case_id, adc, zadc, mask_stem(case_id)))
    if not cases:
        raise InputError(path, "case list has no cases")
    return cases


def _resolve(value: str, folder: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else folder / p


def collect_input_cases(root: Path) -> list[Case]:
    """The cases of an INPUT: a CSV case list (case_id,adc,zadc), or a Grand Challenge or BONBID folder."""
    return read_case_list(root) if is_case_list(root) else find_cases(root)
