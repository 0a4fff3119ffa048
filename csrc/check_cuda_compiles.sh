#!/usr/bin/env bash
# CI check that the CUDA kernels compile, on a machine without a GPU: the .cu files use no torch headers, so plain
# nvcc builds them for sm_90 (H100/H200) in seconds. Exit 0 when they compile, 1 when they do not, 77 when no
# nvcc is found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc=$(command -v nvcc || true)
for dir in "${CUDA_HOME:-}/bin" /usr/local/cuda/bin; do
  [[ -z "$nvcc" && -x "$dir/nvcc" ]] && nvcc="$dir/nvcc"
done
if [[ -z "$nvcc" ]]; then
  echo "nvcc not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin)" >&2
  exit 77
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# the defines torch's BuildExtension passes to nvcc (no implicit half/bfloat16 conversions or operators)
torch_flags=(-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
             -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr)
for src in csrc/*.cu; do
  "$nvcc" -c -std=c++20 -O3 "${torch_flags[@]}" -gencode arch=compute_90,code=sm_90 -Icsrc \
    -o "$out/$(basename "$src" .cu).o" "$src"
  echo "ok: $src ($("$nvcc" --version | tail -n 2 | head -n 1))"
done
