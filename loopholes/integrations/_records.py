"""JSON records of samples and outcomes, shared by the verl and Inspect adapters.

Both engines carry per-row data as JSON-ready values (a parquet column, an
Inspect sample's metadata, a dumped generation line). A sample travels as a
record so that the scorer can rebuild it exactly, and an outcome travels as
the flat dict of :meth:`Outcome.to_dict`, which :func:`outcome_from_dict`
turns back into an :class:`Outcome` for :func:`loopholes.metrics.summarize`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from loopholes.games.base import Outcome, Sample

OUTCOME_FIELDS = ("reward", "itp", "exploited", "scored")


def sample_to_json(sample: Sample, game_name: str = "") -> str:
    """Serialise a sample (index, messages, target, metadata) to a JSON string.

    Raises:
        ValueError: if the target or metadata holds a value that JSON cannot
            represent; a lossy conversion would change what the scorer checks.
    """
    record = {"index": sample.index, "messages": [dict(message) for message in sample.messages],
              "target": sample.target, "metadata": dict(sample.metadata)}
    try:
        return json.dumps(record, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"sample {sample.index} of game {game_name!r} cannot be written as JSON: {error}; "
                         "its target and metadata must be JSON values") from error


def sample_from_json(text: str) -> Sample:
    """Rebuild a sample from :func:`sample_to_json` output.

    Raises:
        ValueError: for text that is not such a record.
    """
    try:
        record = json.loads(text)
    except (TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"invalid sample record {str(text)[:80]!r}: {error}") from error
    if not isinstance(record, dict) or not {"index", "messages"} <= set(record):
        raise ValueError(f"invalid sample record {str(text)[:80]!r}: it needs 'index' and 'messages'")
    messages = tuple({"role": str(m["role"]), "content": str(m["content"])} for m in record["messages"])
    return Sample(index=int(record["index"]), messages=messages, target=record.get("target"),
                  metadata=record.get("metadata") or {})


def outcome_from_dict(record: Mapping[str, Any]) -> Outcome:
    """Rebuild an outcome from the flat dict of :meth:`Outcome.to_dict`.

    Keys other than the four common fields become the details, which is
    what the games' ``set_metrics`` read.

    Raises:
        ValueError: for a record without a ``reward``.
    """
    if "reward" not in record:
        raise ValueError(f"an outcome record needs 'reward'; got the keys {sorted(record)}")
    details = {key: value for key, value in record.items() if key not in OUTCOME_FIELDS}
    scored = bool(record.get("scored", True))
    return Outcome(reward=float(record["reward"]), itp=record.get("itp"), exploited=record.get("exploited"),
                   scored=scored, details=details)
