"""The tuning cache: one JSON line per evaluated config, so tuning resumes after a stop.

A line holds the key -- device, target (kernel or torch:<method>), shape bucket, context
(what else the measurement depended on: batch, heads, timing budgets ...), config and
code version -- and the :class:`Evaluation`. Lines are appended and flushed one at a
time (an interrupted run keeps what it measured); a later line for the same key
replaces an earlier one (a fuller measurement of the same config). A changed checkout
(another code version) measures again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sbbench.autotune.strategies import Evaluate, Evaluation, config_key


def cache_key(*, device: str, target: str, shape: dict, context: dict, config: dict,
              code_version: str) -> str:
    return json.dumps({"device": device, "target": target, "shape": shape,
                       "context": context, "config": config,
                       "code_version": code_version}, sort_keys=True)


class TuneCache:
    """Evaluations by key, backed by an append-only JSON-lines file (None: in memory)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.entries: dict[str, Evaluation] = {}
        self.payloads: dict[str, object] = {}  # other cached results (static compiles)
        if self.path and self.path.exists():
            self._read()

    def _read(self) -> None:
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                    if "payload" in row:
                        self.payloads[row["key"]] = row["payload"]
                        continue
                    evaluation = Evaluation(bool(row["ok"]), tuple(row["samples_ms"]),
                                            row.get("reason", ""), float(row["effort"]))
                    self.entries[row["key"]] = evaluation
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash: measure that config again

    def get(self, key: str, effort: float) -> Evaluation | None:
        """The cached evaluation if it is at least as full as ``effort``."""
        found = self.entries.get(key)
        if found is None or found.effort < effort:
            return None
        return Evaluation(found.ok, found.samples_ms, found.reason, found.effort, cached=True)

    def put(self, key: str, evaluation: Evaluation) -> None:
        self.entries[key] = evaluation
        self._append({"key": key, "ok": evaluation.ok, "samples_ms": list(evaluation.samples_ms),
                      "reason": evaluation.reason, "effort": evaluation.effort})

    def get_payload(self, key: str):
        """A cached non-timing result (e.g. a static compile's resource usage), or None."""
        return self.payloads.get(key)

    def put_payload(self, key: str, payload) -> None:
        self.payloads[key] = payload
        self._append({"key": key, "payload": payload})

    def _append(self, row: dict) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def __len__(self) -> int:
        return len(self.entries) + len(self.payloads)


class CachedEvaluator:
    """Wraps an evaluator: a config already in the cache (at this effort or more) is not
    measured again. ``key_fields`` are the cache key's fields other than the config.
    ``measured`` counts the evaluations that really ran."""

    def __init__(self, evaluate: Evaluate, cache: TuneCache, **key_fields):
        self.evaluate, self.cache, self.key_fields = evaluate, cache, key_fields
        self.measured = 0
        self.hits = 0

    def key(self, config: dict) -> str:
        return cache_key(config=json.loads(config_key(config)), **self.key_fields)

    def __call__(self, config: dict, budget_hint: float = 1.0) -> Evaluation:
        key = self.key(config)
        found = self.cache.get(key, budget_hint)
        if found is not None:
            self.hits += 1
            return found
        evaluation = self.evaluate(config, budget_hint)
        self.measured += 1
        self.cache.put(key, evaluation)
        return evaluation
