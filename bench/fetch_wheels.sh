#!/usr/bin/env bash
# Wheels that the GPU machine's python (3.12, x86-64, manylinux) lacks, into .whl/ (gitignored), for
# bench/gpu_check.sh to install there: `bench/fetch_wheels.sh`, then carry .whl with the run.
# Versions: those this project is tested with here.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$here/.whl"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d "$here/.whl" zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 pycocotools==2.0.11
ls -l "$here/.whl"
du -sh "$here/.whl"
