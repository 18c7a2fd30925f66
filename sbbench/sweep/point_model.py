"""A predicted sweep point (``sbbench sweep --model-only``): the row the cost model gives
for a point, ``source = "modeled"`` (layer 3; docs/measurement.md).

``time_median_ms`` is the calibrated modeled time (``costmodel.modeled_time``: the
roofline divided by the device's published efficiency for the method family, its note
"modeled (calibrated on ...)"), ``timer = "modeled"``; where no published figure
calibrates the family on that device it is the roofline itself, ``timer = "roofline"``,
and the note says so. ``roofline_time_ms`` stays its own column, and
``roofline_fraction`` is roofline / modeled time (the efficiency applied).

``speedup_vs_exact`` divides two times of one kind: exact attention of the same shape is
modeled here too, and the calibrated times are compared only when both the method and
exact are calibrated; otherwise both rooflines are (a calibrated exact time against an
uncalibrated roofline would credit the method with exact's measured inefficiency), and
the reason says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sbbench.core.record import Record
from sbbench.core.types import Budget
from sbbench.measure import costmodel
from sbbench.measure.memory import describe
from sbbench.sweep import guards
from sbbench.sweep.grid import Point
from sbbench.sweep.point import add_model, base_record, profile_info

if TYPE_CHECKING:
    from sbbench.sweep.runner import Settings

TIMER_CALIBRATED = "modeled"  # roofline / published efficiency of the family
TIMER_ROOFLINE = "roofline"  # no published efficiency: the roofline itself


def model_point(point: Point, settings: Settings, spec) -> Record:
    """Predict a point from the cost model alone (see the module doc)."""
    record = base_record(point, settings, "modeled")
    record.device_state["profile"] = profile_info(spec)
    p, b = point.problem, point.budget
    try:
        add_model(record, point, spec)
        modeled = costmodel.modeled_time(p, b, spec)
        exact = costmodel.modeled_time(p, Budget("exact"), spec)
    except Exception as err:
        record.status, record.reason = "failed", f"cost model failed: {describe(err)}"
        return record
    if modeled.time_s is None:
        record.status = "skipped"
        record.reason = (f"device profile {spec.name} has no peak figures for "
                         f"{p.dtype}; nothing to predict from")
        return record
    refusal = guards.kernel_refusal(point, spec)
    if refusal:  # a point that cannot run gets no predicted time
        record.status, record.reason = "skipped", refusal
        return record
    record.time_median_ms = modeled.time_s * 1e3
    record.timer = TIMER_CALIBRATED if modeled.efficiency is not None else TIMER_ROOFLINE
    record.roofline_fraction = modeled.roofline_s / modeled.time_s
    speedup, basis = speedup_vs_exact(b.method, modeled, exact)
    record.speedup_vs_exact = speedup
    record.reason = modeled.note + (f"; {basis}" if basis else "")
    record.telemetry = "not measured: --model-only"
    return record


def speedup_vs_exact(method: str, modeled: costmodel.ModeledTime,
                     exact: costmodel.ModeledTime) -> tuple[float | None, str]:
    """Exact's time over the method's, both of one kind -> (speedup, what was compared:
    "" when it is the two rows' own times)."""
    if method == "exact":
        return 1.0, ""
    calibrated = (modeled.efficiency is not None, exact.efficiency is not None)
    if calibrated == (True, True):
        return (exact.time_s / modeled.time_s if exact.time_s and modeled.time_s else None), ""
    if not exact.roofline_s or not modeled.roofline_s:
        return None, ""
    speedup = exact.roofline_s / modeled.roofline_s
    if calibrated == (False, False):  # both times are the rooflines
        return speedup, ""
    which = "exact" if calibrated[1] else method
    return speedup, (f"speedup vs exact from the rooflines of both (only {which} is "
                     f"calibrated on this device)")
