#!/usr/bin/env bash
# Regenerate the reference reports committed under reports/ and the budgets section of
# tuning_configs/<device>.yaml, from a clean tree, so every committed number comes from a
# run of committed code (the report records the code version and git revision).
#
#   scripts/regenerate_reports.sh            # the CPU reference: quick + supports grids, select
#   scripts/regenerate_reports.sh --gpu h200  # on a GPU machine: its profile instead
#
# The store goes to a temporary folder: a rerun measures everything again on purpose.
set -euo pipefail
cd "$(dirname "$0")/.."
gpu=cpu
if [ "${1:-}" = "--gpu" ]; then gpu="${2:?--gpu needs a device name}"; fi
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "regenerate_reports: the tree has uncommitted changes; commit or stash them first" >&2
  exit 2
fi
store="$(mktemp -d)/reference.sqlite"
# on the CPU one torch thread: samples are the computing thread's CPU time, which other
# jobs on a shared machine barely move (several threads on busy cores wait on each other)
threads=()
if [ "$gpu" = "cpu" ]; then threads=(--threads 1); fi
sbbench sweep --gpu "$gpu" --grid quick --store "$store" "${threads[@]}"
sbbench sweep --gpu "$gpu" --grid supports --store "$store" "${threads[@]}"
sbbench report --store "$store" --out reports
sbbench select --gpu "$gpu" --store "$store" --report-out reports --tuning-dir tuning_configs
echo "regenerate_reports: wrote reports/$gpu/ and tuning_configs/$gpu.yaml from $store" >&2
