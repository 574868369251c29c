"""The append-only results log (one JSON line per finished sample) and the report built from it.

Lossless and resumable: each finished sample is appended and flushed (+ fsync) as soon as it is done,
so a kill loses only requests in flight; a torn last line from a kill mid-write is cut off on the next
open. A rerun skips every id already in the log (accepted or rejected).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.distill.gates import GATES

REQUEST_GATE = "request"
"""Pseudo-gate for a request the endpoint refused (HTTP 4xx other than auth/rate limit)."""


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """id -> last record of the results log (empty if missing); a torn final line is ignored."""
    if not path.is_file():
        return {}
    out: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("id"), str):
            out[row["id"]] = row
    return out


class ResultsLog:
    """Appends records to the JSONL log, flushing and syncing each one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        _cut_torn_tail(path)
        self._f = path.open("a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as a line and make it durable."""
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        """Close the file."""
        self._f.close()


def _cut_torn_tail(path: Path) -> None:
    """Drop a partial last line (no trailing newline) left by a kill in the middle of a write."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    with path.open("r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)


@dataclass
class Report:
    """Counts over the results log: outcomes per sample and failures per gate."""

    total: int
    accepted: int = 0
    rejected: int = 0
    pending: int = 0
    accepted_first_try: int = 0
    accepted_after_retry: int = 0
    attempts: int = 0
    by_gate: dict[str, dict[str, int]] = field(default_factory=dict)
    """gate -> failed_attempts, retried (accepted samples it failed before), rejected (final attempt)."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return dict(self.__dict__)

    def table(self) -> str:
        """A printable summary table."""
        lines = [
            f"samples {self.total}: accepted {self.accepted} (first try {self.accepted_first_try}, "
            f"after retry {self.accepted_after_retry}), rejected {self.rejected}, pending {self.pending}; "
            f"teacher replies {self.attempts}",
            f"{'gate':<14}{'failed attempts':>16}{'retried+accepted':>18}{'rejected':>10}",
        ]
        for gate, c in self.by_gate.items():
            lines.append(f"{gate:<14}{c['failed_attempts']:>16}{c['retried']:>18}{c['rejected']:>10}")
        return "\n".join(lines)


def build_report(results: dict[str, dict[str, Any]], ids: list[str]) -> Report:
    """Report over the samples `ids` (the question manifest) from their results records."""
    report = Report(total=len(ids))
    report.by_gate = {g: {"failed_attempts": 0, "retried": 0, "rejected": 0} for g in (*GATES, REQUEST_GATE)}
    for sid in ids:
        rec = results.get(sid)
        if rec is None:
            report.pending += 1
            continue
        attempts: list[list[dict[str, str]]] = rec.get("attempts", [])
        report.attempts += len(attempts)
        failed = Counter(g for a in attempts for g in {v["gate"] for v in a})
        for gate, n in failed.items():
            report.by_gate.setdefault(gate, {"failed_attempts": 0, "retried": 0, "rejected": 0})
            report.by_gate[gate]["failed_attempts"] += n
        if rec["status"] == "accepted":
            report.accepted += 1
            if len(attempts) > 1:
                report.accepted_after_retry += 1
                for gate in failed:
                    report.by_gate[gate]["retried"] += 1
            else:
                report.accepted_first_try += 1
        else:
            report.rejected += 1
            for gate in {v["gate"] for v in (attempts[-1] if attempts else [])}:
                report.by_gate[gate]["rejected"] += 1
    return report
