#!/usr/bin/env bash
# Paper scale on one GPU: every paper-scale figure (memory, accumulation, precompute, decode, stalls) beside its target, in at most 8 minutes.
#   bench/gpu_check.sh                   on the GPU machine (carry .whl/, made by bench/fetch_wheels.sh)
#   bench/gpu_check.sh --cpu --quick     every part at toy size on a CPU (checks the script itself)
#   bench/gpu_check.sh --parts cache,semi   a subset (cache, step, semi, accumulation, memory, dry_run)
# Needs python3 with torch, torchvision, timm, scipy, h5py, click, tqdm, pyyaml, matplotlib (the GPU
# image has them); zarr, numcodecs, donfig, google-crc32c and pycocotools come from .whl/ when missing.
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-python3}"

missing=()
for mod in torch torchvision timm scipy click tqdm yaml PIL zarr numcodecs donfig google_crc32c pycocotools; do
  "$py" -c "import $mod" 2>/dev/null || missing+=("$mod")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "gpu_check: this python lacks ${missing[*]}; installing the wheels in $here/.whl"
  if ! ls "$here"/.whl/*.whl >/dev/null 2>&1; then
    echo "gpu_check: no wheels in $here/.whl: run bench/fetch_wheels.sh where PyPI is reachable and carry .whl" >&2
    exit 2
  fi
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$here"/.whl/*.whl || exit 2
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  for mod in "${missing[@]}"; do
    "$py" -c "import $mod" 2>/dev/null || { echo "gpu_check: still no $mod after installing .whl" >&2; exit 2; }
  done
fi

# this package is the working tree itself (the repository root is the package dgseg), so what runs is
# what is checked out, never a wheel of an older tree
src="$(mktemp -d)"
ln -s "$here" "$src/dgseg"
export PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
timeout "${GPU_CHECK_TIMEOUT:-480}" "$py" -m dgseg.bench.gpu_check "$@"
rc=$?
rm -rf "$src"
[ $rc -eq 124 ] && echo "gpu_check: stopped at ${GPU_CHECK_TIMEOUT:-480} s" >&2
exit $rc
