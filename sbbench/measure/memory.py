"""Peak memory of one call: the one place every peak-memory number comes from.

GPU: the CUDA allocator's peak over one call (``cuda_memory_profile``).

CPU: the peak RSS of a child process that runs only that call. A helper process
(``python -m sbbench.measure.memory``) imports torch once and forks a child per request,
so a measurement costs a fork, not a new interpreter; the caller does other untimed work
(accuracy checks) meanwhile. A request names the function the child runs
(``Job("package.module:function", {keyword arguments})``); that function builds its inputs
and returns ``peak_rss_of(call)``. The helper resolves (imports) the function before it
forks, so every child starts with its module loaded.

The helper stops quietly when its parent goes away (stdin closed, stdout a broken pipe)
or on Ctrl-C: an orphaned helper never prints a traceback.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import resource
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import NamedTuple

CHILD_TIMEOUT_S = 600.0


class MeasurementFailed(Exception):
    """A measurement that cannot go on: a status ("failed", "oom") and a reason."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` is an out-of-memory error (host MemoryError or CUDA's)."""
    if isinstance(err, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom_type is not None and isinstance(err, oom_type):
        return True
    return "out of memory" in str(err).lower()


def describe(err: BaseException) -> str:
    """One line for an exception: its type and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:400]


# ---- GPU: the CUDA allocator ---------------------------------------------------------

def _is_cuda(device) -> bool:
    return str(getattr(device, "type", device)).startswith("cuda")


def cuda_memory_profile(fn: Callable[[], object], device="cuda") -> tuple[int, int]:
    """(allocated bytes just before ``fn()``, allocator peak during it), in bytes.

    The peak counts every live tensor (the inputs too); peak - baseline is what the
    call itself added. Raises ValueError for a non-CUDA device.
    """
    if not _is_cuda(device):
        raise ValueError(f"cuda_memory_profile needs a CUDA device, got {device!r}")
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return baseline, torch.cuda.max_memory_allocated(device)


def cuda_peak_memory(fn: Callable[[], object], device="cuda") -> int:
    """Peak bytes the CUDA allocator held while ``fn()`` ran (reset peak stats, run,
    ``torch.cuda.max_memory_allocated``); includes tensors alive before the call."""
    return cuda_memory_profile(fn, device)[1]


# ---- CPU: peak RSS of this process -----------------------------------------------------

def process_peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes (ru_maxrss; Linux reports
    KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _rss_bytes(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_of(call: Callable[[], object]) -> dict:
    """Peak RSS of ``call()`` in this (fresh, forked) process.

    baseline: RSS just before the call; peak: the kernel's high-water mark after it,
    reset just before the call where Linux allows (else ru_maxrss since process start).
    """
    gc.collect()
    if _reset_peak_rss() and _rss_bytes("VmHWM") is not None:
        baseline = _rss_bytes("VmRSS")
        call()
        peak = _rss_bytes("VmHWM")
        method = "child_peak_rss (VmHWM reset before the call)"
    else:
        baseline = process_peak_rss_bytes()
        call()
        peak = process_peak_rss_bytes()
        method = "child_ru_maxrss (high-water mark since process start)"
    return {"peak_bytes": int(peak), "baseline_bytes": int(baseline), "method": method}


# ---- the helper process ------------------------------------------------------------------

class Job(NamedTuple):
    """What a child runs: ``entry`` ("package.module:function") called with ``args``; the
    function returns a JSON-able dict (``peak_rss_of``'s)."""

    entry: str
    args: dict


def _resolve(entry: str, cache: dict) -> Callable[..., dict]:
    if entry not in cache:
        module, _, name = entry.partition(":")
        cache[entry] = getattr(importlib.import_module(module), name)
    return cache[entry]


def _answer(job: dict, cache: dict) -> list:
    """Run one job in a forked child; the child's outcome as [status, payload]."""
    function = _resolve(job["entry"], cache)  # imported here, before the fork
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only this job, then exit without cleanup
        os.close(read_fd)
        os.dup2(2, 1)  # stray prints must not reach the helper's answer stream
        try:
            reply = ["ok", function(**job["args"])]
        except BaseException as err:
            reply = ["oom" if is_oom(err) else "failed", describe(err)]
        with os.fdopen(write_fd, "w") as out:
            out.write(json.dumps(reply))
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as answer:
        text = answer.read()
    _, status = os.waitpid(pid, 0)
    if text:
        return json.loads(text)
    if os.WIFSIGNALED(status):
        return ["signal", os.WTERMSIG(status)]
    return ["failed", f"memory child exited with {os.WEXITSTATUS(status)} and no result"]


def _quiet_exit(code: int) -> int:
    # Nothing more may reach a closed stdout: the interpreter's final flush would print
    # "Exception ignored ... BrokenPipeError".
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return code


def serve(stdin=None, stdout=None) -> int:
    """The helper's loop: one JSON job per line on stdin, one JSON reply per line on
    stdout. Ends at end of input (the parent closed it or died), on a broken stdout, or
    on Ctrl-C (the caller handles the interrupt)."""
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    cache: dict = {}
    try:
        for line in stdin:
            if not line.strip():
                continue
            try:
                reply = _answer(json.loads(line), cache)
            except Exception as err:  # a malformed job: say so, keep serving
                reply = ["failed", f"bad request: {describe(err)}"]
            stdout.write(json.dumps(reply) + "\n")
            stdout.flush()
    except KeyboardInterrupt:
        return _quiet_exit(130)
    except (BrokenPipeError, ConnectionResetError):  # the parent is gone
        return _quiet_exit(0)
    return 0


class MemoryServer:
    """The parent's handle on the helper process (started on first use).

    ``start(job)`` sends a job, ``result()`` waits for its measurement (the parent does
    other work meanwhile). One job at a time.
    """

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self._pending = False

    def start(self, job: Job) -> MemoryServer:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "sbbench.measure.memory"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True, bufsize=1)
        self._proc.stdin.write(json.dumps({"entry": job.entry, "args": job.args}) + "\n")
        self._proc.stdin.flush()
        self._pending = True
        return self

    def result(self, timeout_s: float = CHILD_TIMEOUT_S) -> dict:
        """The measurement; MeasurementFailed if the child failed or was killed."""
        self._pending = False
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        line = self._proc.stdout.readline() if ready else ""
        if not line:
            code = self._proc.poll()
            self.close()
            if code == -signal.SIGINT or code == 130:
                raise KeyboardInterrupt
            raise MeasurementFailed("failed", "memory server gave no answer" + (
                f" (exit {code})" if code is not None else f" within {timeout_s:.0f} s"))
        status, payload = json.loads(line)
        if status == "ok":
            return payload
        if status == "signal":
            if payload == signal.SIGINT:
                raise KeyboardInterrupt
            if payload == signal.SIGKILL:
                raise MeasurementFailed("oom", "memory child killed by SIGKILL (out of memory?)")
            raise MeasurementFailed("failed", f"memory child killed by signal {payload}")
        raise MeasurementFailed(status, f"in the memory child: {payload}")

    def cancel(self) -> None:
        """Drop a pending job (the point failed in the parent first)."""
        if self._pending:
            try:
                self.result()
            except (MeasurementFailed, KeyboardInterrupt):
                pass

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.stdin.close()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc.stdout.close()
            self._proc = None
        self._pending = False

    def __enter__(self) -> MemoryServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    import torch  # noqa: F401 - imported once here, so each forked child starts with it

    sys.exit(serve())
