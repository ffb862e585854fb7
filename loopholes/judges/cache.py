"""A cache of judge verdicts keyed by (prompt, response), in memory and optionally on disk.

The on-disk form is a JSONL file that several runs may share: each line contains
the judge's fingerprint, the key and the verdict, and a judge loads only the
lines of its own fingerprint. Only scored verdicts are stored, so a transient
outage is retried on the next call instead of being remembered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loopholes.judges.base import Verdict

logger = logging.getLogger(__name__)


def cache_key(prompt: str, response: str) -> str:
    """Return the SHA-256 hex digest of a (prompt, response) pair."""
    return hashlib.sha256(json.dumps([prompt, response], ensure_ascii=False).encode()).hexdigest()


class VerdictCache:
    """Thread-safe verdict cache for one judge.

    Attributes:
        hits: Number of lookups served from the cache.
        misses: Number of lookups that were not.
    """

    def __init__(self, fingerprint: str, path: str | Path | None = None):
        self.fingerprint = fingerprint
        self.path = Path(path).expanduser() if path else None
        self.hits = 0
        self.misses = 0
        self._entries: dict[str, tuple[str, str, str, str]] = {}
        self._lock = threading.Lock()
        if self.path is not None and self.path.is_file():
            self._load()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, prompt: str, response: str) -> Verdict | None:
        from loopholes.judges.base import Verdict

        with self._lock:
            entry = self._entries.get(cache_key(prompt, response))
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
        label, raw, reason, judge = entry
        return Verdict(label=label, raw=raw, reason=reason, judge=judge, cached=True)

    def put(self, prompt: str, response: str, verdict: Verdict) -> None:
        if not verdict.scored:
            return
        key = cache_key(prompt, response)
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = (verdict.label, verdict.raw, verdict.reason, verdict.judge)
            if self.path is not None:
                self._append(key, verdict)

    def _append(self, key: str, verdict: Verdict) -> None:
        record = {"fingerprint": self.fingerprint, "key": key, "judge": verdict.judge, "label": verdict.label,
                  "raw": verdict.raw, "reason": verdict.reason}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        except OSError as error:
            logger.warning("cannot write the judge cache %s: %s; verdicts stay cached in memory only",
                           self.path, error)

    def _load(self) -> None:
        skipped = 0
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                    if record["fingerprint"] == self.fingerprint and record["label"] is not None:
                        self._entries[record["key"]] = (record["label"], record["raw"], record["reason"],
                                                        record["judge"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    skipped += 1
        if skipped:
            logger.warning("skipped %d unreadable lines of the judge cache %s", skipped, self.path)
        logger.info("loaded %d cached verdicts for %s from %s", len(self._entries), self.fingerprint, self.path)
