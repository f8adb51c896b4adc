#!/usr/bin/env bash
# Download the wheels the GPU run carries (bench/gpu/wheels.txt) into bench/gpu/wheels/ (git-ignored),
# built for the GPU machine's python3 (CPython 3.12, manylinux x86_64), without dependencies: the
# list names every one the machine lacks. Needs a package registry (here, not on the GPU machine).
#   bash bench/gpu/prep_wheels.sh          # then carry ["bench/gpu/wheels"] (bench/gpu/README.md)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-../../.venv/bin/python}
[ -x "$PY" ] || PY=python3
rm -rf wheels.tmp && mkdir wheels.tmp
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d wheels.tmp -r wheels.txt 2>&1 | grep -v "^WARNING: Location" || true
want=$(grep -cv '^\s*\(#\|$\)' wheels.txt)
have=$(ls wheels.tmp/*.whl | wc -l)
if [ "$have" -ne "$want" ]; then
  echo "error: wheels.txt names $want packages but $have wheels were downloaded (see pip's output above)" >&2
  exit 1
fi
rm -rf wheels && mv wheels.tmp wheels
bytes=$(cat wheels/*.whl | wc -c)
mib=$((bytes / 1048576))
echo "bench/gpu/wheels: $have wheels, $mib MiB (the working tree that travels must stay under 64 MiB)"
if [ "$mib" -gt 48 ]; then
  echo "error: $mib MiB of wheels leaves too little of the 64 MiB for the checkout" >&2
  exit 1
fi
