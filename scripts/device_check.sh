#!/usr/bin/env bash
# One command for a GPU session (about 5-7 minutes on one H200, hard limit 7.5 minutes):
# the kernels' GPU tests, then timings of every kernel and of the Triton forwards against
# the torch path and exact SDPA (flash), seq 4096..65536, bf16, head_dim 64 and 128.
#
#   scripts/device_check.sh OUTDIR [--dry-run] [more flags of scripts/device_check.py]
#
# Writes OUTDIR/device_check.{md,json,csv} and OUTDIR/pytest.{log,xml}. --dry-run runs on
# the CPU under the Triton interpreter at tiny sizes (checks the script, measures nothing).
set -euo pipefail
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: $0 OUTDIR [--dry-run] [flags of scripts/device_check.py]" >&2
    exit 2
fi
outdir=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
mkdir -p "$outdir"
export TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1}
# 450 s: the script's own budget (tests 210 s, timing points until 420 s) plus margin
exec timeout --signal=INT --kill-after=20 450 "$python" "$root/scripts/device_check.py" "$outdir" "$@"
