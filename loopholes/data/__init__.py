"""Dataset sources: built-in data, reference-format parquet and Hugging Face datasets.

A *source* is one of:

- ``builtin``: the game's own data set, shipped with the package;
- a path to a ``.parquet`` file in the reference layout (``prompt``,
  ``reward_model``, ``extra_info`` columns), or a folder holding
  ``train.parquet`` / ``test.parquet``;
- ``hf:NAME`` or ``hf:NAME:CONFIG``: a Hugging Face dataset, for users with
  hub access (the game maps its columns).

Rows come back as plain Python values (numpy arrays from parquet become lists),
and games turn them into samples with ``Game.build_sample``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loopholes.games.base import Game, Sample

logger = logging.getLogger(__name__)

PROMPT_LENGTH_POLICIES = ("keep", "filter", "truncate", "error")


class DataError(ValueError):
    """A data source is missing, unreadable or lacks what the game needs."""


def to_plain(value: Any) -> Any:
    """Convert numpy arrays and scalars inside a parquet row into Python values."""
    if isinstance(value, Mapping):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(item) for item in value]
    if hasattr(value, "tolist"):  # numpy arrays and numpy scalars
        return to_plain(value.tolist())
    return value


def read_parquet_rows(path: Path, required_columns: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Read every row of a parquet file as a plain dict.

    Raises:
        DataError: if the file is missing, unreadable or lacks a required column.
    """
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"cannot read parquet file {path}: {error}") from error
    missing = [column for column in required_columns if column not in table.column_names]
    if missing:
        raise DataError(f"data file {path} lacks the columns {missing}; it has {table.column_names}")
    return [to_plain(row) for row in table.to_pylist()]


def resolve_parquet(source: str, split: str) -> Path:
    """Return the parquet file for a path source: the file itself, or ``DIR/SPLIT.parquet``."""
    path = Path(source).expanduser()
    if path.is_dir():
        candidate = path / f"{split}.parquet"
        if not candidate.is_file():
            found = sorted(p.name for p in path.glob("*.parquet"))
            raise DataError(f"folder {path} has no {split}.parquet; parquet files there: {found or 'none'}")
        return candidate
    if not path.exists():
        raise DataError(f"data source not found: {source!r}; give 'builtin', a parquet file or folder, "
                        "or hf:NAME")
    return path


def load_rows(game: Game, source: str, split: str = "train") -> list[dict[str, Any]]:
    """Load the raw rows of a data source for a game and split."""
    if source == "builtin":
        return game.builtin_rows(split)
    if source.startswith("hf:"):
        return _load_hub_rows(source[3:], split)
    return read_parquet_rows(resolve_parquet(source, split), game.required_columns)


def _load_hub_rows(name: str, split: str) -> list[dict[str, Any]]:
    import datasets

    dataset_name, _, config = name.partition(":")
    try:
        dataset = datasets.load_dataset(dataset_name, config or None, split=split)
    except Exception as error:  # the hub client raises many types; all mean "not available"
        raise DataError(f"cannot load Hugging Face dataset {dataset_name!r} (split {split!r}): {error}. "
                        "Without hub access use 'builtin' or a parquet file.") from error
    return [to_plain(row) for row in dataset]


def load_samples(game: Game, source: str, split: str = "train", limit: int | None = None) -> list[Sample]:
    """Load a data source and build the game's samples.

    A row that ``build_sample`` rejects with KeyError, TypeError or
    ValueError stops loading with a ``DataError`` naming the row. A row that
    is valid but cannot be scored (a coding problem without tests) raises
    ``SkipRow`` instead, and the number of skipped rows is logged.
    """
    rows = load_rows(game, source, split)
    samples, skipped = [], {}
    for index, row in enumerate(rows):
        if limit is not None and len(samples) >= limit:
            break
        try:
            samples.append(game.build_sample(row, index))
        except SkipRow as reason:
            skipped[str(reason)] = skipped.get(str(reason), 0) + 1
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"row {index} of {source!r} ({split}) is not a valid {game.name} row: {error}") from error
    for reason, count in skipped.items():
        logger.warning("skipped %d rows of %s (%s): %s", count, source, split, reason)
    if not samples:
        raise DataError(f"data source {source!r} ({split}) gave no usable rows for game {game.name!r}")
    return samples


class SkipRow(Exception):
    """Raised by ``build_sample`` for a row that is valid data but cannot be scored."""


@dataclass
class LengthReport:
    """Counts of the samples that a prompt-length policy checked, removed or truncated."""

    policy: str
    max_prompt_tokens: int | None
    total: int
    too_long: int
    removed: int
    truncated: int


def fit_prompt_length(samples: list[Sample], count_tokens, max_prompt_tokens: int | None,
                      policy: str = "keep", truncate_text=None) -> tuple[list[Sample], LengthReport]:
    """Apply a prompt-length policy and report how many samples it touched.

    Args:
        samples: The samples to check.
        count_tokens: Callable from prompt text to its token count in the policy's tokenizer.
        max_prompt_tokens: The limit; None keeps every sample unchecked.
        policy: ``keep`` (report only), ``filter`` (remove long prompts),
            ``truncate`` (shorten the last message to fit) or ``error``
            (raise if any prompt is too long).
        truncate_text: Callable ``(text, max_tokens) -> text`` used by ``truncate``.

    Nothing is ever dropped silently: the report gives the counts and they are logged.
    """
    import dataclasses

    if policy not in PROMPT_LENGTH_POLICIES:
        raise ValueError(f"unknown prompt length policy {policy!r}; choose one of: {', '.join(PROMPT_LENGTH_POLICIES)}")
    if max_prompt_tokens is None:
        return samples, LengthReport(policy, None, len(samples), 0, 0, 0)

    kept, too_long, truncated = [], 0, 0
    for sample in samples:
        length = count_tokens(sample.prompt_text)
        if length <= max_prompt_tokens:
            kept.append(sample)
            continue
        too_long += 1
        if policy == "keep":
            kept.append(sample)
        elif policy == "error":
            raise DataError(f"prompt of row {sample.index} has {length} tokens, over the limit of "
                            f"{max_prompt_tokens}; raise the limit or choose the filter or truncate policy")
        elif policy == "truncate":
            messages = list(sample.messages)
            overflow = length - max_prompt_tokens
            last = messages[-1]
            budget = max(1, count_tokens(last["content"]) - overflow)
            messages[-1] = {**last, "content": truncate_text(last["content"], budget)}
            kept.append(dataclasses.replace(sample, messages=tuple(messages)))
            truncated += 1

    report = LengthReport(policy, max_prompt_tokens, len(samples), too_long, len(samples) - len(kept), truncated)
    if too_long:
        logger.warning("%d of %d prompts exceed %d tokens; policy %r removed %d and truncated %d",
                       too_long, len(samples), max_prompt_tokens, policy, report.removed, truncated)
    return kept, report
