#!/usr/bin/env bash
# Package a built image and its model for Grand Challenge:
#   dist/hieseg-<version>[-cpu|-nomodel].tar.gz   `docker save | gzip` of the image (the algorithm's container image)
#   dist/model.tar.gz                  the model as Grand Challenge's model upload wants it: manifest.json and the
#                                      ONNX files at the archive's top level; Grand Challenge extracts it to
#                                      /opt/ml/model, which takes precedence over a model baked into the image
#
#   ./export.sh [IMAGE]          # default hieseg:<version> (VARIANT=cpu: hieseg:<version>-cpu); DIST=dist
#   VERIFY=1 ./export.sh         # also `docker load` the tarball back and check that the loaded tag runs
#   MODEL_DIR=/some/model ./export.sh hieseg:<version>-nomodel   # an image built with MODEL_DIR=none: its model
#                                                                 # tarball comes from that folder
#   MODEL_ONLY=1 [MODEL_DIR=model] ./export.sh                    # only dist/model.tar.gz (a new model for an
#                                                                 # uploaded image); needs no Docker engine
#
# The model is the image's baked-in /opt/app/model unless MODEL_DIR names a folder; either way the archive is
# checked by loading it as /opt/ml/model would be (manifest parsed, every member's sha256 verified) before it is
# written, with the image's own code when there is an image, else with this checkout's.
set -euo pipefail
cd "$(dirname "$0")"
docker="${DOCKER:-docker}"
version="$(sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' hieseg/version.py)"
case "${VARIANT:-gpu}" in gpu) suffix="" ;; cpu) suffix="-cpu" ;; *) echo "export.sh: VARIANT must be gpu or cpu" >&2; exit 2 ;; esac
image="${1:-${IMAGE:-hieseg}:$version$suffix}"
dist="${DIST:-dist}"
model_only="${MODEL_ONLY:-0}"
mkdir -p "$dist"
if [[ "$model_only" != 1 ]]; then
  "$docker" image inspect "$image" >/dev/null 2>&1 || { echo "export.sh: no image $image (run ./build.sh)" >&2; exit 1; }
fi
if command -v pigz >/dev/null 2>&1; then gz=(pigz -n); else gz=(gzip -n); fi
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
start=$(date +%s)

# 1. The model: from MODEL_DIR, else (MODEL_ONLY) model/, else the one baked into the image.
mkdir -p "$stage/model"
if [[ -n "${MODEL_DIR:-}" || "$model_only" == 1 ]]; then
  src="${MODEL_DIR:-model}"
  [[ -f "$src/manifest.json" ]] || { echo "export.sh: $src/manifest.json not found: MODEL_DIR must be a model folder" >&2; exit 1; }
  cp -r "$src/." "$stage/model/"
else
  cid="$("$docker" create "$image")"
  "$docker" cp "$cid:/opt/app/model/." "$stage/model/" && "$docker" rm "$cid" >/dev/null
  [[ -f "$stage/model/manifest.json" ]] || {
    echo "export.sh: $image has no model baked in (built with MODEL_DIR=none?): set MODEL_DIR to the model folder to export" >&2
    exit 1; }
fi
# Reproducible archive: sorted names, fixed owner and mtime, no gzip timestamp; only what a model folder needs.
model_tar="$dist/model.tar.gz"
tar -C "$stage/model" --sort=name --owner=0 --group=0 --numeric-owner --mtime='2000-01-01 00:00:00Z' \
    --exclude='*.pt' --exclude='*.pth' --exclude='*.ckpt' --exclude='__pycache__' --exclude='./.*' \
    -cf - . | gzip -n > "$model_tar.partial"
# Check the archive as Grand Challenge will use it: extracted into an empty /opt/ml/model.
mkdir -p "$stage/opt-ml-model" && tar -xzf "$model_tar.partial" -C "$stage/opt-ml-model"
check='
import sys
from hieseg.errors import HiesegError
from hieseg.engine.manifest import load_manifest
try:
    m = load_manifest(sys.argv[1])
except HiesegError as exc:
    sys.exit(f"export.sh: {exc}")
print(f"{m.name} {m.version}, {len(m.members)} members, manifest sha256 {m.sha256}")'
if [[ "$model_only" == 1 ]]; then
  py="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
  summary="$(PYTHONPATH="$PWD" "$py" -c "$check" "$stage/opt-ml-model")" || { rm -f "$model_tar.partial"; echo "export.sh: the model archive does not load" >&2; exit 1; }
else
  chmod -R a+rX "$stage"
  summary="$("$docker" run --rm --network none --entrypoint python -v "$stage/opt-ml-model:/opt/ml/model:ro" "$image" \
             -c "$check" /opt/ml/model)" || { rm -f "$model_tar.partial"; echo "export.sh: the model archive does not load in $image" >&2; exit 1; }
fi
mv "$model_tar.partial" "$model_tar"
echo "export.sh: $(du -h "$model_tar" | cut -f1) $model_tar ($summary): $(tar -tzf "$model_tar" | grep -v '/$' | sed 's#^\./##' | tr '\n' ' ')" >&2
if [[ "$model_only" == 1 ]]; then
  sha256sum "$model_tar" > "$dist/SHA256SUMS-model"
  echo "$model_tar"
  exit 0
fi

# 2. The image.
name="$(echo "${image##*/}" | tr ':' '-')"
image_tar="$dist/$name.tar.gz"
echo "export.sh: docker save $image | ${gz[0]} > $image_tar" >&2
"$docker" save "$image" | "${gz[@]}" > "$image_tar.partial"
mv "$image_tar.partial" "$image_tar"
echo "export.sh: $(du -h "$image_tar" | cut -f1) $image_tar ($(( $(date +%s) - start )) s)" >&2
sha256sum "$image_tar" "$model_tar" > "$dist/SHA256SUMS-$name"

if [[ "${VERIFY:-0}" == 1 ]]; then
  echo "export.sh: verifying: docker load of $image_tar" >&2
  # gzip -dc | docker load: Docker's `load -i x.tar.gz` decompresses itself, podman's Docker API (4.x) does not.
  loaded="$(gzip -dc "$image_tar" | "$docker" load | tee /dev/stderr | sed -n 's/^Loaded image[^:]*: *//p' | tail -1)"
  echo >&2
  [[ -n "$loaded" ]] || { echo "export.sh: docker load printed no image name" >&2; exit 1; }
  "$docker" run --rm --network none --entrypoint python "$loaded" -c \
    'import hieseg, onnxruntime, SimpleITK; print("loaded image OK: hieseg", hieseg.__version__, "onnxruntime", onnxruntime.__version__)'
fi
echo "$image_tar"
echo "$model_tar"
