"""The model manifest: the one place an ensemble is described. Training writes it, inference only reads it.

Schema (version 1), ``model/manifest.json``::

    {
      "schema_version": 1,
      "name": "...", "version": "...",
      "preprocessing": {"crop_margin_mm": 8.0},
      "members": [
        {"name": "unet3d_f0", "file": "unet3d_f0.onnx", "sha256": "<hex>", "kind": "3d" | "2d",
         "channels": [{"source": "adc" | "zadc",
                       "transform": {"type": "clip_scale", "low": 0, "high": 3400}
                                  | {"type": "zscore", "mean": m, "std": s, "clip": c?}
                                  | {"type": "below", "threshold": -2}}],
         "target_spacing_zyx": [z | null, y, x],      # null keeps the native spacing of that axis
         "patch_size": [z, y, x] (3d) | [y, x] (2d),  # sliding-window tile; a smaller volume runs whole
         "divisible_by": [z, y, x] | [y, x],          # padding the network needs
         "batch_size": 1,                             # tiles (3d) or slices (2d) per forward pass
         "tta_flips": [[], [2]],                      # flip axes of the (z, y, x) volume, [] = identity
         "weight": 0.5}
      ],
      "fusion": {"threshold": 0.4, "min_component_mm3": 10.0,
                 "empty_case": {"max_probability_below": 0.0, "min_lesion_mm3": 0.0}},
      "domain": {...optional: the training domain, see hieseg/domain.py; absent -> domain.DEFAULT_DOMAIN...},
      "provenance": {...free-form: training commit, data, cross-validation scores...},
      "license": "...", "intended_use": "...", "references": [...]   # optional: shown in reports and the model card
    }

Networks take float32 (N, C, [z,] y, x) named by their single input and return lesion probabilities
(sigmoid already applied) of shape (N, 1, [z,] y, x).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hieseg.errors import ModelError
from hieseg.files import file_digest, read_verified
from hieseg.inputs.domain import Domain, default_domain

SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")  # the one description of the format
SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
SCHEMA_VERSION: int = SCHEMA["properties"]["schema_version"]["const"]
MANIFEST_NAME = "manifest.json"
GRAND_CHALLENGE_MODEL_DIR = Path("/opt/ml/model")
MODEL_DIR_ENV = "HIESEG_MODEL_DIR"
# The shipped model: inside the package in an installed wheel (pyproject maps model/ to hieseg/model at build
# time), else the checkout's (and the container's) top-level model/ beside the package.
PACKAGED_MODEL_DIR = Path(__file__).resolve().parents[1] / "model"  # hieseg/model in a wheel
CHECKOUT_MODEL_DIR = Path(__file__).resolve().parents[2] / "model"  # model/ beside hieseg/ in a checkout
BUNDLED_MODEL_DIR = PACKAGED_MODEL_DIR if (PACKAGED_MODEL_DIR / "manifest.json").is_file() else CHECKOUT_MODEL_DIR

_TRANSFORM_KEYS = {"clip_scale": {"low", "high"}, "zscore": {"mean", "std"}, "below": {"threshold"}}


@dataclass(frozen=True)
class Member:
    name: str
    path: Path
    sha256: str
    kind: str
    channels: tuple[dict[str, Any], ...]
    target_spacing_zyx: tuple[float | None, float | None, float | None]
    patch_size: tuple[int, ...]
    divisible_by: tuple[int, ...]
    batch_size: int
    tta_flips: tuple[tuple[int, ...], ...]
    weight: float


@dataclass(frozen=True)
class ComponentFilter:
    """One rule on each thresholded component (postprocess.component_filter_keeps): ``peak`` keeps a component
    whose peak probability is >= value; ``distance_to_largest`` drops one whose nearest voxel is more than value mm
    from the largest component; ``edge`` drops one whose deepest voxel lies within value mm of the brain's outside."""

    type: str
    value: float

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "value": self.value}


COMPONENT_FILTERS = ("peak", "distance_to_largest", "edge")


@dataclass(frozen=True)
class MaskRule:
    """How fused probabilities become the mask (applied by postprocess.postprocess): the threshold, the smallest
    lesion component kept, an optional component filter and the case-level empty rule; the manifest's ``fusion``."""

    threshold: float
    min_component_mm3: float
    empty_max_probability_below: float = 0.0
    empty_min_lesion_mm3: float = 0.0
    component_filter: ComponentFilter | None = None


@dataclass(frozen=True)
class Manifest:
    directory: Path
    name: str
    version: str
    crop_margin_mm: float
    members: tuple[Member, ...]
    mask_rule: MaskRule
    provenance: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    license: str | None = None
    intended_use: str | None = None
    references: tuple[str, ...] = ()
    domain: Domain = field(default_factory=default_domain)

    def summary(self) -> dict[str, Any]:
        summary = {"name": self.name, "version": self.version, "manifest_sha256": self.sha256,
                   "members": [m.name for m in self.members]}
        if self.license:
            summary["license"] = self.license
        return summary


def resolve_model_dir(explicit: str | Path | None = None) -> Path:
    """The model folder, first of: ``explicit`` (``--model``), ``$HIESEG_MODEL_DIR``, Grand Challenge's
    /opt/ml/model when it holds a manifest (the model tarball), the model shipped with the code."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get(MODEL_DIR_ENV):
        return Path(os.environ[MODEL_DIR_ENV])
    if (GRAND_CHALLENGE_MODEL_DIR / MANIFEST_NAME).is_file():
        return GRAND_CHALLENGE_MODEL_DIR
    return BUNDLED_MODEL_DIR


_TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
                          "number": (int, float), "integer": int}


def _is_type(value: Any, name: str) -> bool:
    if name in ("number", "integer") and isinstance(value, bool):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES[name])


def schema_errors(value: Any, schema: dict[str, Any] | None = None, path: str = "") -> list[str]:
    """Every violation of ``schema`` (default: manifest.schema.json) by ``value``, each as "<json path>: <problem>".

    Implements the subset of JSON Schema 2020-12 the manifest schema uses: type, const, enum, required,
    properties, additionalProperties (false), items, minItems/maxItems, minLength/maxLength, minimum/maximum,
    exclusiveMinimum, plus the annotation ``x-message`` (the wording used when that subtree fails). No dependency:
    the schema file stays the single source of truth."""
    schema = SCHEMA if schema is None else schema
    where = path or "manifest"
    errors = _violations(value, schema, path, where)
    if errors and "x-message" in schema:  # the schema's own wording for this field (a non-validating keyword)
        return [f"{where}: {schema['x-message']}"]
    return errors


def _violations(value: Any, schema: dict[str, Any], path: str, where: str) -> list[str]:
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, t) for t in types):
            return [f"{where}: expected {' or '.join(types)}, got {json.dumps(value)[:60]}"]
    if "const" in schema and value != schema["const"]:
        return [f"{where}: expected {schema['const']!r}, got {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: expected one of {schema['enum']}, got {value!r}"]
    errors: list[str] = []
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{where}: missing required {key!r}")
        props = schema.get("properties", {})
        for key, sub in value.items():
            if key in props:
                errors += schema_errors(sub, props[key], f"{path}.{key}" if path else key)
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}: unexpected key {key!r}")
    elif isinstance(value, list):
        n = len(value)
        if "minItems" in schema and n < schema["minItems"] or "maxItems" in schema and n > schema["maxItems"]:
            lo, hi = schema.get("minItems"), schema.get("maxItems")
            want = f"{lo}" if lo == hi else f"{lo if lo is not None else 0}..{hi if hi is not None else 'any'}"
            errors.append(f"{where}: expected {want} items, got {n}")
        if "items" in schema:
            for i, item in enumerate(value):
                errors += schema_errors(item, schema["items"], f"{where}[{i}]")
    elif isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{where}: string of length {len(value)} outside "
                          f"{schema.get('minLength', 0)}..{schema.get('maxLength', 'any')}")
    elif _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} is above the maximum {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{where}: {value} must be greater than {schema['exclusiveMinimum']}")
    return errors


def validate_manifest(raw: Any, where: Path | str) -> None:
    """Raise ModelError naming the file and the first offending JSON path when ``raw`` breaks the schema."""
    errors = schema_errors(raw)
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise ModelError(f"{where}: {'; '.join(errors[:3])}{more}")


def _require(cond: bool, where: Path, problem: str) -> None:
    if not cond:
        raise ModelError(f"{where}: {problem}")


def _member(raw: dict[str, Any], directory: Path, where: Path) -> Member:
    name = raw.get("name", "?")
    for key in ("name", "file", "sha256", "kind", "channels", "target_spacing_zyx", "weight"):
        _require(key in raw, where, f"member {name!r} lacks {key!r}")
    kind = raw["kind"]
    _require(kind in ("2d", "3d"), where, f"member {name!r}: kind must be '2d' or '3d', not {kind!r}")
    ndim = 3 if kind == "3d" else 2
    for ch in raw["channels"]:
        _require(ch.get("source") in ("adc", "zadc"), where, f"member {name!r}: bad channel source {ch!r}")
        t = ch.get("transform", {})
        _require(t.get("type") in _TRANSFORM_KEYS and _TRANSFORM_KEYS[t["type"]] <= set(t), where,
                 f"member {name!r}: bad channel transform {t!r}")
    spacing = raw["target_spacing_zyx"]
    _require(len(spacing) == 3, where, f"member {name!r}: target_spacing_zyx needs 3 entries")
    if kind == "2d":
        _require(spacing[0] is None, where, f"member {name!r}: a 2d member keeps native slices (z spacing null)")
    patch = tuple(int(v) for v in raw.get("patch_size", [0] * ndim))
    div = tuple(int(v) for v in raw.get("divisible_by", [1] * ndim))
    _require(len(patch) == ndim and len(div) == ndim, where,
             f"member {name!r}: patch_size and divisible_by need {ndim} entries")
    flips = tuple(tuple(int(a) for a in f) for f in raw.get("tta_flips", [[]]))
    _require(all(0 <= a <= 2 for f in flips for a in f), where, f"member {name!r}: tta_flips axes are 0..2")
    _require(float(raw["weight"]) >= 0, where, f"member {name!r}: negative weight")
    path = directory / raw["file"]
    _require(path.is_file(), path, f"model file of member {name!r} not found")
    return Member(
        name=name, path=path, sha256=str(raw["sha256"]).lower(), kind=kind,
        channels=tuple(raw["channels"]),
        target_spacing_zyx=tuple(None if s is None else float(s) for s in spacing),  # type: ignore[arg-type]
        patch_size=patch, divisible_by=div, batch_size=int(raw.get("batch_size", 1)),
        tta_flips=flips or ((),), weight=float(raw["weight"]),
    )


def component_filter_of(raw: dict[str, Any] | None) -> ComponentFilter | None:
    """The manifest's ``fusion.component_filter`` (already schema-checked), or None."""
    return None if raw is None else ComponentFilter(str(raw["type"]), float(raw["value"]))


def parse_manifest(raw: dict[str, Any], directory: Path, where: Path | None = None) -> Manifest:
    """Validate a manifest's structure (no checksum work) and resolve its member paths against ``directory``."""
    where = where or directory / MANIFEST_NAME
    if isinstance(raw, dict) and raw.get("schema_version") != SCHEMA_VERSION:
        raise ModelError(f"{where}: schema_version {raw.get('schema_version')!r} is not supported "
                         f"(expected {SCHEMA_VERSION})")
    validate_manifest(raw, where)
    _require(raw.get("schema_version") == SCHEMA_VERSION, where,
             f"schema_version {raw.get('schema_version')!r} is not supported (expected {SCHEMA_VERSION})")
    members = raw.get("members") or []
    _require(len(members) > 0, where, "no members")
    names = [m.get("name") for m in members]
    _require(len(set(names)) == len(names), where, "member names must be unique")
    fusion = raw.get("fusion", {})
    _require("threshold" in fusion, where, "fusion.threshold missing")
    empty = fusion.get("empty_case", {})
    parsed = tuple(_member(m, directory, where) for m in members)
    _require(sum(m.weight for m in parsed) > 0, where, "member weights sum to zero")
    domain = _domain(raw.get("domain"), where)
    return Manifest(
        directory=directory, name=str(raw.get("name", "hieseg")), version=str(raw.get("version", "0")),
        crop_margin_mm=float(raw.get("preprocessing", {}).get("crop_margin_mm", 8.0)),
        members=parsed,
        mask_rule=MaskRule(float(fusion["threshold"]), float(fusion.get("min_component_mm3", 0.0)),
                           float(empty.get("max_probability_below", 0.0)), float(empty.get("min_lesion_mm3", 0.0)),
                           component_filter_of(fusion.get("component_filter"))),
        provenance=raw.get("provenance", {}),
        **_optional_text_fields(raw, where),
        domain=domain,
    )


def _optional_text_fields(raw: dict[str, Any], where: Path) -> dict[str, Any]:
    """``license`` and ``intended_use`` (strings) and ``references`` (a list of strings), each optional."""
    out: dict[str, Any] = {}
    for key in ("license", "intended_use"):
        if raw.get(key) is not None:
            _require(isinstance(raw[key], str) and raw[key].strip() != "", where, f"{key} must be a non-empty string")
            out[key] = raw[key]
    refs = raw.get("references")
    if refs is not None:
        _require(isinstance(refs, list) and all(isinstance(r, str) and r.strip() for r in refs), where,
                 "references must be a list of non-empty strings")
        out["references"] = tuple(refs)
    return out


def _where_models_come_from(explicit: str | Path | None) -> str:
    """Which rule picked the folder, so that a missing model says how to give one."""
    if explicit is not None:
        return "from --model"
    if os.environ.get(MODEL_DIR_ENV):
        return f"from ${MODEL_DIR_ENV}"
    return (f"no model is bundled here: give --model DIR, set ${MODEL_DIR_ENV}, or mount a model at "
            f"{GRAND_CHALLENGE_MODEL_DIR}")


def _domain(raw: dict[str, Any] | None, where: Path) -> Domain:
    """The manifest's training domain, or the default one of the 40 training cases when the field is absent."""
    if raw is None:
        return default_domain()
    try:
        return Domain.from_json(raw)
    except ValueError as exc:
        raise ModelError(f"{where}: {exc}") from None


def load_manifest(model_dir: str | Path | None = None, verify: bool = True) -> Manifest:
    """Read and validate ``model_dir/manifest.json``; with ``verify``, refuse members whose sha256 differs
    (``sessions.read_verified``, the one checksum check; sessions are built from the bytes it returns, so a
    caller that builds sessions passes ``verify=False`` and is still checked)."""
    directory = resolve_model_dir(model_dir)
    where = directory / MANIFEST_NAME
    if not where.is_file():
        raise ModelError(f"{where}: model manifest not found ({_where_models_come_from(model_dir)})")
    try:
        raw = json.loads(where.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{where}: cannot parse manifest ({exc})") from None
    manifest = parse_manifest(raw, directory, where)
    if verify:
        for member in manifest.members:
            read_verified(member.path, member.sha256)
    return Manifest(**{**manifest.__dict__, "sha256": file_digest(where)})
