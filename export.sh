#!/usr/bin/env bash
# Package a built image for Grand Challenge:
#   dist/hieseg-<version>[-cpu].tar.gz   `docker save | gzip` of the image (upload as the algorithm's container image)
#   dist/model.tar.gz                    the model baked into that image (/opt/app/model, i.e. model/ or build.sh's
#                                        MODEL_DIR: manifest.json + ONNX files) at the archive's top level; upload as
#                                        the algorithm's model: Grand Challenge extracts it to /opt/ml/model, which
#                                        then takes precedence over the model baked in the image
#
#   ./export.sh [IMAGE]        # default hieseg:<version> (VARIANT=cpu: hieseg:<version>-cpu); DIST=dist
#   VERIFY=1 ./export.sh       # also `docker load` the tarball back and check that the loaded tag runs
set -euo pipefail
cd "$(dirname "$0")"
docker="${DOCKER:-docker}"
version="$(sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' hieseg/__init__.py)"
case "${VARIANT:-gpu}" in gpu) suffix="" ;; cpu) suffix="-cpu" ;; *) echo "export.sh: VARIANT must be gpu or cpu" >&2; exit 2 ;; esac
image="${1:-${IMAGE:-hieseg}:$version$suffix}"
dist="${DIST:-dist}"
mkdir -p "$dist"
"$docker" image inspect "$image" >/dev/null 2>&1 || { echo "export.sh: no image $image (run ./build.sh)" >&2; exit 1; }
if command -v pigz >/dev/null 2>&1; then gz=(pigz -n); else gz=(gzip -n); fi

name="$(echo "${image##*/}" | tr ':' '-')"
image_tar="$dist/$name.tar.gz"
start=$(date +%s)
echo "export.sh: docker save $image | ${gz[0]} > $image_tar" >&2
"$docker" save "$image" | "${gz[@]}" > "$image_tar.partial"
mv "$image_tar.partial" "$image_tar"

# The model from the image itself, so that the two uploads cannot disagree. Reproducible archive: sorted names,
# fixed owner and mtime, no gzip timestamp; training checkpoints excluded.
model_tar="$dist/model.tar.gz"
stage="$(mktemp -d)"
cid="$("$docker" create "$image")"
"$docker" cp "$cid:/opt/app/model" "$stage/" && "$docker" rm "$cid" >/dev/null
[[ -f "$stage/model/manifest.json" ]] || { echo "export.sh: $image has no /opt/app/model/manifest.json" >&2; exit 1; }
tar -C "$stage/model" --sort=name --owner=0 --group=0 --numeric-owner --mtime='2000-01-01 00:00:00Z' \
    --exclude='*.pt' --exclude='*.pth' --exclude='*.ckpt' --exclude='__pycache__' -cf - . | gzip -n > "$model_tar"
rm -rf "$stage"

echo "export.sh: $(du -h "$image_tar" | cut -f1) $image_tar ($(( $(date +%s) - start )) s)" >&2
echo "export.sh: $(du -h "$model_tar" | cut -f1) $model_tar: $(tar -tzf "$model_tar" | grep -v '/$' | tr '\n' ' ')" >&2
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
