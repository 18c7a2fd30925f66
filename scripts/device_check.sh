#!/usr/bin/env bash
# One command for a GPU session: first the risk checks (tests/kernels/test_gpu_risks.py:
# tf32 tolerances, 64-bit offsets on a 65,536-token packed QKV buffer, the largest
# head_dim and bucket the kernels take, the folded grid), so the first GPU minutes answer them; then the
# other GPU tests (`pytest -m gpu`: the kernels against the
# torch reference, incl. causal + padding masks, every kernel's search space sampled, the
# static compile against the JIT), then the `device_check` and `device_check_d256` grids
# (every method on the torch and Triton backends against exact attention, bf16, causal or
# not: head_dim 64 with buckets 64 and 256, head_dim 256 with bucket 64; the kernels
# refuse head_dim 256 with bucket 256, so no grid holds it) into one results store, then
# its report. Rows are in the one Record schema, so `sbbench check`, `select` and
# `report` read them like any sweep's.
#
#   scripts/device_check.sh OUTDIR [--gpu NAME] [--dry-run]
#
# --gpu NAME: the device profile (default auto: detect; name one if detection fails).
# --dry-run: print the commands and run only `sbbench sweep --dry-run` (the grid's points
# and cost-model numbers); works on a CPU machine, measures nothing.
# Writes OUTDIR/risks.{log,xml}, OUTDIR/pytest.{log,xml}, OUTDIR/device_check.sqlite and
# OUTDIR/reports/.
# Exit status: the first failing step's (the sweep and report still run after failed tests).
set -uo pipefail
usage="usage: $0 OUTDIR [--gpu NAME] [--dry-run]"
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "$usage" >&2
    exit 2
fi
outdir=$1
shift
gpu=auto
dry_run=0
while [ $# -gt 0 ]; do
    case $1 in
        --gpu) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; gpu=$2; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        *) echo "$0: unknown argument $1; $usage" >&2; exit 2 ;;
    esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
cd "$root"  # python -m sbbench then imports this checkout's sbbench
export TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1}

risks=("$python" -m pytest -q -m gpu -p no:cacheprovider "--junitxml=$outdir/risks.xml"
       tests/kernels/test_gpu_risks.py)
tests=("$python" -m pytest -q -m gpu -p no:cacheprovider "--junitxml=$outdir/pytest.xml"
       --deselect tests/kernels/test_gpu_risks.py tests)
grids=(device_check device_check_d256)
sweep=("$python" -m sbbench sweep --gpu "$gpu" --store "$outdir/device_check.sqlite"
       --no-progress --grid)
report=("$python" -m sbbench report --store "$outdir/device_check.sqlite"
        --out "$outdir/reports")

if [ "$dry_run" = 1 ]; then
    echo "device_check: dry run; on a GPU machine this runs:"
    for step in "timeout 240 ${risks[*]} > $outdir/risks.log" \
                "timeout 300 ${tests[*]} > $outdir/pytest.log" \
                "${sweep[*]} ${grids[0]}" "${sweep[*]} ${grids[1]}" "${report[*]}"; do
        echo "+ $step"
    done
    status=0
    for grid in "${grids[@]}"; do
        "${sweep[@]}" "$grid" --dry-run || { rc=$?; [ "$status" = 0 ] && status=$rc; }
    done
    exit "$status"
fi

status=0
echo "device_check: risk checks first (log in $outdir/risks.log)" >&2
timeout --signal=INT --kill-after=20 240 "${risks[@]}" > "$outdir/risks.log" 2>&1 || status=$?
tail -n 1 "$outdir/risks.log"
echo "device_check: GPU tests (log in $outdir/pytest.log)" >&2
timeout --signal=INT --kill-after=20 300 "${tests[@]}" > "$outdir/pytest.log" 2>&1 \
    || { rc=$?; [ "$status" = 0 ] && status=$rc; }
tail -n 1 "$outdir/pytest.log"
for grid in "${grids[@]}"; do
    echo "device_check: sweep of the $grid grid" >&2
    "${sweep[@]}" "$grid" || { rc=$?; [ "$status" = 0 ] && status=$rc; }
done
"${report[@]}" || { rc=$?; [ "$status" = 0 ] && status=$rc; }
exit "$status"
