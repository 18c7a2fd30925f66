"""What a sweep tells its user: a progress bar with ETA, and the closing summary line."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field


@dataclass
class Summary:
    total: int = 0
    measured: int = 0
    resumed: int = 0  # already in the store: skipped
    lost_race: int = 0  # another sweep wrote the same key first
    statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    claimed_elsewhere: int = 0  # left to another sweep measuring them on the same store

    def line(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.statuses.items())) or "none"
        text = (f"{self.total} points: {self.measured} run ({counts}), {self.resumed} "
                f"already in the store; {self.seconds:.1f} s")
        if self.lost_race:
            text += f"; {self.lost_race} written first by another sweep (kept theirs)"
        if self.claimed_elsewhere:
            text += (f"; {self.claimed_elsewhere} left to another sweep measuring them now "
                     f"(run again later to fill in any it does not finish)")
        return text


class Progress:
    """A plain-text progress bar with ETA on stderr (one line per point when not a TTY)."""

    def __init__(self, total: int, *, stream=None, enabled: bool = True, width: int = 24):
        self.total, self.width, self.enabled = total, width, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.done = 0
        self.timed: list[float] = []  # seconds of each point actually run

    def step(self, label: str, *, ran_seconds: float | None = None) -> None:
        self.done += 1
        if ran_seconds is not None:
            self.timed.append(ran_seconds)
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        remaining = self.total - self.done
        eta = (statistics.fmean(self.timed) * remaining) if self.timed else 0.0
        filled = int(self.width * self.done / max(self.total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        text = (f"[{bar}] {self.done}/{self.total} {_clock(elapsed)} elapsed, "
                f"ETA {_clock(eta)}  {label}")
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else \
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
