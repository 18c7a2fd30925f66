"""The peak-memory helper process: jobs answered in forked children, quiet when orphaned."""

from __future__ import annotations

import json
import subprocess
import sys

from sbbench.measure.memory import Job, MemoryServer, describe, is_oom


def _helper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sbbench.measure.memory"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_the_helper_runs_a_job_in_a_child():
    with MemoryServer() as server:
        rss = server.start(Job("sbbench.measure.memory:process_peak_rss_bytes", {})).result()
        assert rss > 10 * 2**20


def test_an_orphaned_helper_exits_quietly_on_a_broken_pipe():
    proc = _helper()
    proc.stdout.close()  # the parent is gone: nobody reads the answers
    job = {"entry": "sbbench.measure.memory:process_peak_rss_bytes", "args": {}}
    proc.stdin.write(json.dumps(job) + "\n")
    proc.stdin.close()
    assert proc.wait(timeout=120) == 0
    err = proc.stderr.read()
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_the_helper_ends_when_its_parent_closes_stdin():
    proc = _helper()
    out, err = proc.communicate("", timeout=120)
    assert proc.returncode == 0 and out == "" and "Traceback" not in err


def test_error_helpers():
    assert is_oom(MemoryError()) and is_oom(RuntimeError("CUDA out of memory. Tried"))
    assert not is_oom(ValueError("x"))
    assert describe(RuntimeError("first\nsecond")) == "RuntimeError: first"
