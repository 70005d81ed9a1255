#!/usr/bin/env bash
# Run a CUDA build of ranksweep on the GPU machine, finding the CUDA 13 libraries it needs.
# Usage: scripts/cuda-run.sh BIN [args...]
# The libraries may sit outside the linker path (e.g. a Python site-packages/nvidia/cu13/lib);
# for each library that ldd reports missing, the first copy found (not a stub) goes on
# LD_LIBRARY_PATH. libcurand.so.10 is the usual one missing (recent torch wheels lack it).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BIN [args...]" >&2; exit 2; }
bin=$1; shift
for lib in $(ldd "$bin" | awk '/not found/{print $1}'); do
  p=$(find / -xdev \( -path /proc -o -path /sys \) -prune -o -name "$lib" -not -path "*/stubs/*" -print 2>/dev/null | head -1)
  [ -n "$p" ] || { echo "cuda-run: $lib not found on this machine" >&2; exit 1; }
  export LD_LIBRARY_PATH=$(dirname "$p")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
done
exec "$bin" "$@"
