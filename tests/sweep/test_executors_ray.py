"""Executors: the local one, and sweeps on a local Ray instance (CPU points, 2 workers).

The Ray tests share one Ray instance started the way ``sbbench sweep --executor ray``
without ``--address`` starts it, and skip when Ray is not installed. Points are tiny
(seq 64/96, d 16, one seed, a few ms of timing) so the module stays well under a minute
on 2 cores; most of that is Ray's start-up.
"""

from __future__ import annotations

import os

import pytest
import torch

from sbbench.core.devices import get_device
from sbbench.core.errors import UserError
from sbbench.core.provenance import code_version
from sbbench.core.record import Record, git_revision
from sbbench.sweep import executors, runner
from sbbench.sweep import point as sweep_point
from sbbench.sweep.executors import (
    LocalExecutor,
    RayExecutor,
    Target,
    VersionMismatch,
    measure_batch,
    resolve_targets,
    task_options,
)
from sbbench.sweep.grid import Grid, expand
from sbbench.sweep.runner import Settings
from sbbench.sweep.store import Store

TINY = Grid(name="tiny", seq_len=(64, 96), head_dim=(16,), heads=(2,), n_features=(8,),
            bucket_size=(16,), n_hashes=(1,), seeds=(0,),
            methods=("exact", "performer", "lsh", "scatterbrain", "scatterbrain_local"))
VERSION = code_version()  # the workers run this checkout: same code version


def settings(**changes) -> Settings:
    base = dict(device="cpu", seeds=(0,), warmup_ms=1.0, rep_ms=3.0, min_samples=3,
                measure_memory=False, measure_energy=False, git_revision=git_revision())
    base.update(changes)
    return Settings(**base)


def cpu_target(**changes) -> Target:
    return Target(get_device("cpu"), settings(**changes))


def points():
    return expand(TINY).points  # 2 shapes x (exact, performer, lsh, sb, sb_local)


def keys(records) -> list[tuple]:
    return [r.key() for r in records]


# ---------------------------------------------------------------------------------------
# Without Ray
# ---------------------------------------------------------------------------------------

def test_task_options_ask_for_the_profile_gpu_or_cpus():
    assert task_options(get_device("cpu"), settings()) == {"num_cpus": 1, "num_gpus": 0}
    assert task_options(get_device("cpu"), settings(num_threads=4))["num_cpus"] == 4
    a100 = get_device("a100-80gb")
    assert task_options(a100, settings())["accelerator_type"] == "A100"
    fine = {"GPU": 8, "accelerator_type:A100": 1, "accelerator_type:A100-80G": 1}
    assert task_options(a100, settings(), fine) == {
        "num_cpus": 1, "num_gpus": 1, "accelerator_type": "A100-80G"}
    assert task_options(get_device("h100-pcie"), settings())["accelerator_type"] == "H100"
    for name in executors.RAY_ACCELERATOR_TYPES:
        assert get_device(name).kind == "cuda"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without this GPU")
def test_worker_refuses_a_device_it_does_not_have():
    spec = get_device("h100-sxm")
    target = settings(device=spec.name, torch_device="cuda")
    messages = list(measure_batch([points()[0].to_json()], target, spec, None, {}))
    assert [m["kind"] for m in messages] == ["refused"]
    assert "h100-sxm" in messages[0]["reason"] and "refused" in messages[0]["reason"]


def test_worker_refuses_another_code_version():
    messages = list(measure_batch([points()[0].to_json()], settings(code_version="other"),
                                  get_device("cpu"), None, {}))
    assert [m["kind"] for m in messages] == ["mismatch"]
    assert messages[0]["worker"]["code_version"] == VERSION


def test_worker_measures_a_batch_and_says_who_it_is():
    batch = points()[:2]  # exact, performer of one shape
    messages = list(measure_batch([p.to_json() for p in batch], settings(),
                                  get_device("cpu"), None, {}))
    assert [(m["kind"], m["index"]) for m in messages] == [("record", 0), ("record", 1)]
    for message in messages:
        record = Record.from_dict(message["record"])
        assert record.status == "ok", record.reason
        assert record.device_state["worker"]["pid"] == os.getpid()
        assert record.versions["sbbench"] and "before" in record.device_state
    performer = Record.from_dict(messages[1]["record"])
    assert performer.speedup_vs_exact is not None  # exact ran first in the batch


def test_resolve_targets():
    template = settings()
    remote = resolve_targets("cpu,l4,h100", template, remote=True)
    assert [(t.spec.name, t.settings.device, t.settings.torch_device) for t in remote] == [
        ("cpu", "cpu", "cpu"), ("l4", "l4", "cuda"), ("h100-sxm", "h100-sxm", "cuda")]
    assert remote[0].settings.seeds == template.seeds
    with pytest.raises(UserError, match="auto"):
        resolve_targets("auto", template, remote=True)
    with pytest.raises(UserError, match="several devices need --executor ray"):
        resolve_targets("cpu,h100", template, remote=False)
    modeled = resolve_targets("a100,h100-sxm,h100", template, remote=False, model_only=True)
    assert [t.spec.name for t in modeled] == ["a100-80gb", "h100-sxm"]


def test_local_executor_is_the_runner(tmp_path):
    batch = points()[:2]
    with Store(tmp_path / "r.sqlite") as store:
        summary = LocalExecutor().run_sweep(batch, [cpu_target()], store, progress=False)
        assert summary.measured == 2 and summary.statuses == {"ok": 2}
        again = LocalExecutor().run_sweep(batch, [cpu_target()], store, progress=False)
        assert again.resumed == 2 and again.measured == 0 and len(store) == 2


# ---------------------------------------------------------------------------------------
# On a local Ray instance
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with 2 CPUs, started by a RayExecutor without an address."""
    pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    executor = RayExecutor(init_options={"num_cpus": 2, "log_to_driver": False})
    ray = executor.connect()
    yield ray
    executor.close()
    assert not ray.is_initialized()


def make_measure(marker_dir, crash_once: str, always_fails: str):
    """point.measure_point, except that the point labelled ``crash_once`` kills its
    worker process (os._exit) the first time it runs, and ``always_fails`` raises out of
    the task every time. A closure, so Ray ships it by value to the workers."""
    def measure(point, *args, **kwargs):
        label = point.label()
        if label == crash_once:
            marker = marker_dir / "crashed"
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
        if label == always_fails:
            raise RuntimeError(f"injected failure of {label}")
        return sweep_point.measure_point(point, *args, **kwargs)

    return measure


def test_ray_sweep_survives_lost_workers(ray_cluster, tmp_path):
    pts = points()
    crash_once = next(p for p in pts if p.budget.method == "lsh" and p.problem.seq_len == 96)
    fails = next(p for p in pts if p.budget.method == "scatterbrain"
                 and p.problem.seq_len == 64)
    with Store(tmp_path / "r.sqlite") as store:
        # Two points of the first shape were measured before (a resumed sweep).
        LocalExecutor().run_sweep(pts[:2], [cpu_target()], store, progress=False)
        executor = RayExecutor(max_attempts=2, measure_cpu=False, poll_s=0.2,
                               measure=make_measure(tmp_path, crash_once.label(),
                                                    fails.label()))
        summary = executor.run_sweep(pts, [cpu_target()], store, progress=False)
        records = store.records()
        assert store.sweeps()[-1]["outcome"] == "done"
    assert (tmp_path / "crashed").exists(), "the worker was never killed"
    crashed_pid = int((tmp_path / "crashed").read_text())
    # every point ends measured or recorded as failed: none lost, none duplicated
    assert len(records) == len(pts) == 10
    assert sorted(keys(records)) == sorted(runner.point_key(p, cpu_target().settings)
                                           for p in pts)
    assert summary.resumed == 2 and summary.measured == 8 and summary.gave_up == 1
    assert summary.retried >= 2 and summary.lost_race == 0
    label_of = {runner.point_key(p, cpu_target().settings): p.label() for p in pts}
    by_label = {label_of[r.key()]: r for r in records}
    failed = by_label[fails.label()]
    assert failed.status == "failed"
    assert "gave up after 2" in failed.reason and "injected failure" in failed.reason
    survivor = by_label[crash_once.label()]
    assert survivor.status == "ok", survivor.reason
    assert survivor.device_state["worker"]["pid"] != crashed_pid
    for label, record in by_label.items():
        if label == fails.label():
            continue
        assert record.status == "ok", (label, record.reason)
        assert record.versions["sbbench"] and record.time_median_ms > 0
        if record.method != "exact":
            assert record.speedup_vs_exact is not None, label
    remote = [r for r in records if "worker" in r.device_state]
    assert len(remote) == 7  # the 8 measured here, less the one given up
    assert all(r.device_state["worker"]["ray_node_id"] for r in remote)


class _InterruptAfter:
    """A progress stream that interrupts the driver (Ctrl-C) at its n-th line."""

    def __init__(self, lines: int):
        self.left = lines

    def write(self, text: str) -> None:
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt

    def flush(self) -> None:
        pass


def test_ray_interrupted_driver_resumes(ray_cluster, tmp_path):
    pts = points()
    target = cpu_target()
    with Store(tmp_path / "r.sqlite") as store:
        executor = RayExecutor(measure_cpu=False, poll_s=0.2, batch_points=3)
        with pytest.raises(KeyboardInterrupt):
            executor.run_sweep(pts, [target], store, stream=_InterruptAfter(3))
        kept = len(store)  # each row is committed before its progress line
        assert 3 <= kept < len(pts)
        summary = executor.run_sweep(pts, [target], store, progress=False)
        records = store.records()
        assert [s["outcome"] for s in store.sweeps()] == ["interrupted", "done"]
    assert summary.resumed == kept and summary.measured == len(pts) - kept
    assert len(records) == 10 and len(set(keys(records))) == 10
    assert all(r.status == "ok" for r in records)


def test_ray_refuses_mixed_versions_unless_allowed(ray_cluster, tmp_path):
    pts = points()[:2]
    target = cpu_target(code_version="another-version")  # the driver's code differs
    with Store(tmp_path / "r.sqlite") as store:
        with pytest.raises(VersionMismatch, match="--allow-mixed-versions"):
            RayExecutor(measure_cpu=False, poll_s=0.2).run_sweep(pts, [target], store,
                                                                   progress=False)
        assert len(store) == 0 and store.sweeps()[-1]["outcome"] == "refused"
        summary = RayExecutor(measure_cpu=False, poll_s=0.2, allow_mixed_versions=True) \
            .run_sweep(pts, [target], store, progress=False)
        records = store.records()
    assert summary.measured == 2
    for record in records:
        assert record.status == "ok" and record.code_version == "another-version"
        assert "--allow-mixed-versions" in record.reason
        assert record.device_state["worker"]["code_version"] == VERSION


def test_ray_needs_the_requested_gpu_in_the_cluster(ray_cluster, tmp_path):
    spec = get_device("h100-sxm")
    target = Target(spec, settings(device=spec.name, torch_device="cuda"))
    with Store(tmp_path / "r.sqlite") as store, \
            pytest.raises(UserError, match="no node of the Ray cluster has h100-sxm"):
        RayExecutor().run_sweep(points()[:1], [target], store, progress=False)


def test_ray_run_per_device_is_the_tune_hook(ray_cluster):
    def where(spec):
        return spec.name, os.getpid()

    runs = RayExecutor(poll_s=0.2).run_per_device(where, [get_device("cpu")])
    assert runs["cpu"].error is None and runs["cpu"].value[0] == "cpu"
    assert runs["cpu"].value[1] != os.getpid() and runs["cpu"].worker["hostname"]

    def broken(spec):
        raise RuntimeError("tuner failed")

    runs = RayExecutor(poll_s=0.2, max_attempts=2).run_per_device(broken, [get_device("cpu")])
    assert runs["cpu"].value is None and "tuner failed" in runs["cpu"].error
    assert runs["cpu"].attempts == 2


def test_ray_sweep_leaves_points_claimed_by_another_sweep(ray_cluster, tmp_path):
    pts = points()[:2]
    path = tmp_path / "r.sqlite"
    with Store(path) as store, Store(path) as other:
        other.host, other.pid = "another-host", 4242  # a live sweep on another machine
        assert other.claim(runner.point_key(pts[1], cpu_target().settings))
        summary = RayExecutor(measure_cpu=False, poll_s=0.2).run_sweep(
            pts, [cpu_target()], store, progress=False)
        assert summary.claimed_elsewhere == 1 and summary.measured == 1
        assert [r.method for r in store.records()] == [pts[0].budget.method]
        assert store.conn.execute("SELECT pid FROM claims").fetchall() == [(4242,)]
