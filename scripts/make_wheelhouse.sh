#!/usr/bin/env bash
# Download, on the host, every wheel the image needs, so that `docker build` installs offline (pip --no-index)
# and reproducibly: exact pins from the requirements file plus scripts/container-constraints.txt for the
# transitive dependencies, binary wheels only, for the image's CPython and manylinux x86_64.
#
#   scripts/make_wheelhouse.sh [gpu|cpu]  # gpu: requirements.txt (onnxruntime-gpu, the image that ships)
#                                               # cpu: requirements-cpu.txt (onnxruntime, CPU-only image)
#   PYTHON_VERSIONS="3.11 3.12"                 # CPython(s) of the base images you build on:
#                                               #   3.11 Debian bookworm (local base), 3.12 Ubuntu 24.04 (CUDA base)
#   FORCE=1                                     # re-download even when the stamp matches
#   (build.sh sets PYTHON_VERSIONS from the base image when that image is present locally)
#
# Result: wheelhouse/<variant>/*.whl, SHA256SUMS and a .stamp of its inputs; build.sh calls this when the stamp
# is missing or stale. wheelhouse/ is git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
variant="${1:-gpu}"
case "$variant" in
  gpu) req=requirements.txt ;;
  cpu) req=requirements-cpu.txt ;;
  *) echo "make_wheelhouse: unknown variant '$variant' (gpu|cpu)" >&2; exit 2 ;;
esac
pythons="${PYTHON_VERSIONS:-3.11 3.12}"
constraints=scripts/container-constraints.txt
dest="wheelhouse/$variant"
inputs="$(cat "$req" "$constraints" | sha256sum | cut -c1-16)"
# The stamp records the inputs' hash and the CPythons present; a wheelhouse that already holds every requested
# CPython for the same inputs is kept, and a re-download keeps the CPythons it had.
if [[ -f "$dest/.stamp" && "$(cut -d' ' -f1 "$dest/.stamp")" == "$inputs" ]]; then
  have="$(cut -d' ' -f2- "$dest/.stamp")"
  missing=""
  for pv in $pythons; do [[ " $have " == *" $pv "* ]] || missing+=" $pv"; done
  if [[ -z "$missing" && "${FORCE:-0}" != 1 ]]; then
    echo "make_wheelhouse: $dest is up to date (CPython $have)" >&2
    exit 0
  fi
  pythons="$(echo $have $pythons | tr ' ' '\n' | sort -uV | tr '\n' ' ')"
fi
pythons="$(echo $pythons)"
# A python with pip on the host: the project venv when there is one, else the system python3.
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  for cand in .venv/bin/python python3; do
    if command -v "$cand" >/dev/null && "$cand" -m pip --version >/dev/null 2>&1; then py="$cand"; break; fi
  done
fi
[[ -n "$py" ]] || { echo "make_wheelhouse: need a python with pip on the host" >&2; exit 1; }
tmp="$(mktemp -d "wheelhouse/.tmp-$variant.XXXXXX" 2>/dev/null || { mkdir -p wheelhouse; mktemp -d "wheelhouse/.tmp-$variant.XXXXXX"; })"
trap 'rm -rf "$tmp"' EXIT
for pv in $pythons; do
  abi="cp${pv/./}"
  echo "make_wheelhouse: $req for CPython $pv ($abi, manylinux x86_64) -> $dest" >&2
  "$py" -m pip download --quiet --disable-pip-version-check \
    --only-binary=:all: --implementation cp --python-version "$pv" --abi "$abi" --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any \
    -r "$req" -c "$constraints" -d "$tmp" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
done
( cd "$tmp" && sha256sum -- *.whl > SHA256SUMS )
echo "$inputs $pythons" > "$tmp/.stamp"
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
echo "make_wheelhouse: $(ls "$dest"/*.whl | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest" >&2
