#!/usr/bin/env bash
# Build the CUDA (sm_90 / CUDA 13.0) variant of ranksweep on a CPU-only x86_64 Linux host.
#
# Usage: scripts/build-cuda.sh [cuda|cudnn] [extra cargo args...]
# Env:   CUDA_TC_DIR      toolchain cache (default ~/.cache/cuda-13.0-tc, ~1.7 GB, made once)
#        CUDA_TARGET_DIR  cargo target dir (default target/cuda: keeps the CPU build untouched)
#        CUDA_COMPUTE_CAP default 90 (H100/H200 -> sm_90a; there is no nvidia-smi here)
#        PYTHON           python used to create the wheel venv (default python3)
#
# Everything comes from pinned NVIDIA wheels on PyPI (see ../shared/notes/cuda-build.md). There
# is no installable libcuda.so, so a link-only stub with soname libcuda.so.1 is generated from
# cuda.h; it is never shipped, at run time the driver's libcuda.so.1 is used.
#
# Check that every dynamic symbol resolves (no GPU needed), with the stub standing in for the
# driver library:
#   TC=${CUDA_TC_DIR:-~/.cache/cuda-13.0-tc}; mkdir -p /tmp/cudastub
#   ln -sf $TC/cuda/lib64/stubs/libcuda.so /tmp/cudastub/libcuda.so.1
#   LD_LIBRARY_PATH=/tmp/cudastub:$TC/cuda/lib64 LD_BIND_NOW=1 $BIN --version
# A missing symbol makes the loader fail before main ("symbol lookup error").
#
# On the GPU machine run the binary through scripts/cuda-run.sh, which finds the CUDA libraries.
set -euo pipefail
FEATURE=${1:-cuda}; [ $# -gt 0 ] && shift
case "$FEATURE" in cuda|cudnn) ;; *) echo "usage: $0 [cuda|cudnn] [cargo args]" >&2; exit 2;; esac
TC=${CUDA_TC_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cuda-13.0-tc}
TARGET_DIR=${CUDA_TARGET_DIR:-target/cuda}
PY=${PYTHON:-python3}

# Everything pinned to CUDA 13.0: driver 580 can JIT PTX ISA <= 9.0 only. nvidia-cuda-nvcc does
# NOT pin nvvm/crt; unpinned they come as 13.5 -> PTX 9.5 -> "ptxas fatal: Unsupported .version".
PINS=(
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
)
CUDNN_PIN=nvidia-cudnn-cu13==9.13.0.50   # any 9.x has the same soname libcudnn.so.9

mkdir -p "$TC"
# One builder at a time per toolchain cache (several worktrees may share it).
exec 9>"$TC/.lock"; flock 9
if [ ! -f "$TC/.pins-ok" ]; then
  [ -x "$TC/venv/bin/python" ] || "$PY" -m venv "$TC/venv"
  "$TC/venv/bin/pip" install -q --disable-pip-version-check "${PINS[@]}"
  touch "$TC/.pins-ok"
fi
if [ "$FEATURE" = cudnn ] && [ ! -f "$TC/.cudnn-ok" ]; then
  "$TC/venv/bin/pip" install -q --disable-pip-version-check --no-deps "$CUDNN_PIN"
  touch "$TC/.cudnn-ok"
fi
SP=$("$TC/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
W=$SP/nvidia/cu13

# CUDA_HOME-shaped tree: wheel bin/include/nvvm, unversioned .so names, libcuda stub.
CR=$TC/cuda
if [ ! -f "$CR/lib64/stubs/libcuda.so" ]; then
  rm -rf "$CR"; mkdir -p "$CR/lib64/stubs"
  for d in bin include nvvm; do ln -s "$W/$d" "$CR/$d"; done
  for l in cudart.so.13 cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13; do
    ln -s "$W/lib/lib$l" "$CR/lib64/lib$l"; ln -s "lib$l" "$CR/lib64/lib${l%.so.*}.so"
  done
  grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$W/include/cuda.h" | sort -u \
    | awk '{printf "int %s(void){return 999;}\n",$1}' > "$CR/lib64/stubs/libcuda_stub.c"
  gcc -shared -fPIC -nostdlib -Wl,-soname,libcuda.so.1 \
      -o "$CR/lib64/stubs/libcuda.so" "$CR/lib64/stubs/libcuda_stub.c"
fi
if [ "$FEATURE" = cudnn ] && [ ! -e "$CR/lib64/libcudnn.so" ]; then
  ln -s "$SP/nvidia/cudnn/lib/libcudnn.so.9" "$CR/lib64/libcudnn.so.9"
  ln -s libcudnn.so.9 "$CR/lib64/libcudnn.so"
fi
exec 9>&-

export CUDA_HOME=$CR CUDA_PATH=$CR PATH=$CR/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} CUDARC_CUDA_VERSION=13000
# A newer system nvcc earlier in PATH would emit PTX the 580 driver cannot JIT.
nvcc --version | grep -q 'release 13.0' || { echo "nvcc is not 13.0" >&2; exit 1; }
cargo build --release --features "$FEATURE" --target-dir "$TARGET_DIR" "$@"

for bin in "$TARGET_DIR"/release/ranksweep; do
  [ -f "$bin" ] || continue
  echo "== binary: $bin ($(du -h "$bin" | cut -f1))"
  objdump -p "$bin" | awk '/NEEDED/{print "   needs", $2}'
  echo "   max GLIBC: $(objdump -T "$bin" | grep -oE 'GLIBC_[0-9.]+' | sort -uV | tail -1)"
  echo "   PTX: $(grep -aoE '\.(version [0-9]+\.[0-9]+|target sm_[0-9a-z]+)' "$bin" | sort -u | tr '\n' ' ')"
  if grep -aoE '\.version [0-9]+\.[0-9]+' "$bin" | grep -vqE '\.version (9\.0|[1-8]\.[0-9])$'; then
    echo "   ERROR: PTX newer than ISA 9.0; driver 580 cannot JIT it" >&2; exit 1
  fi
done
