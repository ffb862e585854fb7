"""Offline scoring: completions generated elsewhere, scored by a game.

Input: JSONL, one completion per line, with ``index`` (the row of the data
source), ``completion`` (the text), and optionally the game's overrides
(``audited`` for self-grading, ``judge_output`` for compliance). Output: the
same lines with ``outcome`` added. The whole input is validated before any
scoring, and the output is written to a temporary file that replaces the
target only when every line has been scored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loopholes import metrics
from loopholes.data import DataError, load_samples
from loopholes.games.base import make_game

COMPLETION_KEYS = ("index", "completion")


def read_completions(path: Path, valid_indices: set[int], allowed_overrides: tuple[str, ...],
                     game_name: str) -> list[dict[str, Any]]:
    """Read and validate a completions file.

    Raises:
        DataError: naming the line number for a missing file, malformed JSON,
            a missing key, a wrong type, an index outside the data source,
            or an override the game does not accept.
    """
    if not path.is_file():
        raise DataError(f"completions file not found: {path}")
    records = []
    with path.open(encoding="utf-8", errors="strict") as handle:
        try:
            lines = handle.read().splitlines()
        except UnicodeDecodeError as error:
            raise DataError(f"completions file {path} is not UTF-8 text: {error}") from error
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"line {number} of {path} is not valid JSON: {error.msg}") from error
        if not isinstance(record, dict):
            raise DataError(f"line {number} of {path} must be a JSON object, got {type(record).__name__}")
        missing = [key for key in COMPLETION_KEYS if key not in record]
        if missing:
            raise DataError(f"line {number} of {path} lacks {missing}; each line needs index and completion")
        index = record["index"]
        if not isinstance(index, int) or isinstance(index, bool):
            raise DataError(f"line {number} of {path}: index must be an integer, got {index!r}")
        if index not in valid_indices:
            low, high = min(valid_indices), max(valid_indices)
            raise DataError(f"line {number} of {path}: index {index} is not a usable row of the data source "
                            f"(rows {low}..{high}, {len(valid_indices)} usable)")
        if not isinstance(record["completion"], str):
            raise DataError(f"line {number} of {path}: completion must be a string, "
                            f"got {type(record['completion']).__name__}")
        for key, expected_type in OVERRIDE_KEYS.items():
            if key not in record or record[key] is None:
                continue
            if key not in allowed_overrides:
                raise DataError(f"line {number} of {path}: game {game_name!r} does not accept {key!r}; "
                                f"accepted overrides: {', '.join(allowed_overrides) or 'none'}")
            if not isinstance(record[key], expected_type):
                raise DataError(f"line {number} of {path}: {key} must be a {expected_type.__name__}, "
                                f"got {record[key]!r}")
        records.append(record)
    if not records:
        raise DataError(f"completions file {path} has no completions")
    return records


# Keys that some game accepts as a per-sample override, with their JSON types; a
# line carrying one that its game does not accept is rejected rather than ignored.
OVERRIDE_KEYS = {"audited": bool, "judge_output": str}


def score_file(game_name: str, variant: str, options: Mapping[str, Any], data: str, split: str,
               completions_path: Path, output_path: Path, seed: int = 0) -> dict[str, Any]:
    """Score a completions file and write the output file; return the set's metrics."""
    output_path = Path(output_path)
    if output_path.is_dir():
        raise DataError(f"output {output_path} is a folder; give a file path such as {output_path / 'scored.jsonl'}")
    game = make_game(game_name, variant, options)
    samples = load_samples(game, data, split)
    by_index = {sample.index: sample for sample in samples}
    records = read_completions(Path(completions_path), set(by_index), game.score_overrides, game.name)

    preflight = getattr(game, "preflight", None)
    needs_judge = any(r.get("judge_output") is None for r in records)
    if callable(preflight) and ("judge_output" not in game.score_overrides or needs_judge):
        preflight()

    draws, seen = [], {}
    for record in records:
        draws.append(seen.get(record["index"], 0))
        seen[record["index"]] = draws[-1] + 1
    overrides = [{key: record[key] for key in game.score_overrides if record.get(key) is not None}
                 for record in records]
    outcomes = game.score_batch([by_index[r["index"]] for r in records], [r["completion"] for r in records],
                                seed=seed, draws=draws, overrides=overrides)

    output_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = output_path.with_name(f".{output_path.name}.partial-{os.getpid()}")
    try:
        with temporary.open("w", encoding="utf-8") as handle:
            for record, outcome in zip(records, outcomes):
                handle.write(json.dumps({**record, "outcome": outcome.to_dict()}, default=str) + "\n")
        os.replace(temporary, output_path)
    finally:
        temporary.unlink(missing_ok=True)
    return metrics.summarize(game, outcomes)
