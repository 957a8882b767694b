"""On-disk cache of judgements: one sqlite file under ``JudgeConfig.cache_dir``.

A judgement is one float, keyed by ``sha256(json([judge_key, prompt, a, b]))``: ``b`` is the second
response of an ordered pair (PairRM, LLM judges) or ``None`` for a per-response score (embedded,
reward model). ``judge_key`` is the judge's name plus a digest of every setting that changes its
numbers, so a rescoring with the same judge costs nothing and a changed setting never reads stale
values. sqlite serialises writers with a file lock, so two processes (two workflow jobs) can share
one cache folder; values are deterministic, so ``INSERT OR IGNORE`` keeps whichever came first.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

FILENAME = "judgements.sqlite"
_CHUNK = 500  # keys per SELECT (sqlite's default limit is 999 host parameters)


def judgement_key(judge_key: str, prompt: str, a: str, b: str | None = None) -> str:
    """The cache key of one judgement (a hex digest; the texts themselves are not stored)."""
    blob = json.dumps([judge_key, prompt, a, b], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
    """``get_many`` / ``put_many`` of ``{key: float}`` in ``<cache_dir>/judgements.sqlite``."""

    def __init__(self, cache_dir: str | Path, timeout: float = 120.0):
        self.path = Path(cache_dir).expanduser() / FILENAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=timeout)
        with self._conn:
            self._conn.execute("CREATE TABLE IF NOT EXISTS judgements (key TEXT PRIMARY KEY, value REAL NOT NULL)")

    def get_many(self, keys: Iterable[str]) -> dict[str, float]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, float] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(f"SELECT key, value FROM judgements WHERE key IN ({marks})", chunk)
            found.update(rows.fetchall())
        return found

    def put_many(self, items: dict[str, float]) -> None:
        if not items:
            return
        with self._conn:  # one transaction
            self._conn.executemany(
                "INSERT OR IGNORE INTO judgements (key, value) VALUES (?, ?)",
                [(k, float(v)) for k, v in items.items()],
            )

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]

    def close(self) -> None:
        self._conn.close()
