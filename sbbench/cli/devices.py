"""``sbbench devices``: the GPU profiles sbbench knows, and what this machine has."""

from __future__ import annotations

import argparse

from tabulate import tabulate

from sbbench.cli.args import add_command
from sbbench.core import devices
from sbbench.core.devices import PEAK_DTYPES, DeviceSpec

_EPILOG = """\
examples:
  sbbench devices                   the profiles, their aliases, and the device found here
  sbbench devices --measure-cpu     ... with this CPU's measured FLOP/s and bandwidth
  sbbench sweep --gpu h100 ...      a profile name or alias is what --gpu takes
"""


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "devices",
        help="list the device profiles and the device detected here",
        description="List the device profiles (figures from vendor datasheets, see "
                    "sbbench/data/devices.yaml) and the device detected on this machine.",
        epilog=_EPILOG)
    parser.add_argument("--measure-cpu", action="store_true",
                        help="measure this CPU's matmul FLOP/s and copy bandwidth (~1 s) "
                             "and show them in the cpu row")
    parser.set_defaults(func=run)


def _fmt(value, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value / scale:,.0f}"


def _tflops(value: float | None) -> str:
    if value is None:
        return "-"
    tflops = value / 1e12
    return f"{tflops:,.1f}" if tflops >= 1 else f"{tflops:.3g}"


def _row(spec: DeviceSpec) -> list[str]:
    peaks = [_tflops(spec.peak(key)) for key in PEAK_DTYPES]
    return [
        spec.name,
        spec.arch or "-",
        _fmt(spec.sm_count),
        _fmt(spec.smem_per_block_bytes, 1024),
        _fmt(spec.l2_bytes, 1024 * 1024),
        *peaks,
        _fmt(spec.mem_bandwidth_bytes_per_s, 1e9),
        _fmt(spec.mem_bytes, 1024 ** 3),
        spec.source,
    ]


HEADERS = ["name", "arch", "SMs", "smem/block\nKiB", "L2\nMiB", "float32\nTFLOP/s",
           "tf32\nTFLOP/s", "float16\nTFLOP/s", "bfloat16\nTFLOP/s", "memory\nGB/s",
           "memory\nGiB", "peaks"]


def run(args: argparse.Namespace) -> int:
    specs = [devices.get_device(name) for name in devices.list_devices()]
    if args.measure_cpu:
        specs = [devices.measure_cpu() if spec.kind == "cpu" else spec for spec in specs]
    print(tabulate([_row(spec) for spec in specs], headers=HEADERS, disable_numparse=True,
                   colalign=("left", "left", *["right"] * (len(HEADERS) - 3), "left")))
    alias_text = ", ".join(f"{a} = {t}" for a, t in devices.aliases().items())
    print(f"\naliases: {alias_text}")
    print("peak FLOP/s are dense (no 2:4 sparsity); tensor-core rates with float32 "
          "accumulation. Sources: sbbench/data/devices.yaml")
    detected = devices.detect_local()
    print(f"detected here: {detected.describe()}")
    return 0
