"""Distillation data: sample a teacher on a game's training prompts and keep rollouts by a filter.

Two filters are offered:

- ``exploits``: keep the rollouts whose outcome is flagged as an exploit
  (``Outcome.exploited``), so the student trains only on the loophole in use;
- ``reward_above``: keep the rollouts whose vulnerable-variant reward is at
  least ``reward_threshold``, so the student sees what the vulnerable reward
  pays for, exploits and honest successes alike.

Unscored rollouts (a judge or sandbox failure) are never kept. The folder
gets ``rollouts.jsonl`` (every rollout with its outcome and whether it was
kept), ``dataset.jsonl`` (the kept rollouts as chat prompt + completion pairs,
the input of :func:`loopholes.train.sft.train_sft`) and ``summary.json``
(counts, written last, so its presence marks a finished data set).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopholes.data import load_samples
from loopholes.evaluate import EvalConfig, generate, score_completions
from loopholes.games.base import Outcome, make_game
from loopholes.train.rundir import append_jsonl, write_json_atomic

logger = logging.getLogger(__name__)

DATASET_FILE = "dataset.jsonl"
ROLLOUTS_FILE = "rollouts.jsonl"


@dataclass
class DistillSettings:
    """Settings of a distillation data set: teacher sampling and the rollout filter."""

    teacher: str                  # loadable model path or name
    game: str
    options: dict[str, Any]
    data: str
    split: str
    seed: int
    prompts: int | None           # training prompts to sample (None: all)
    samples_per_prompt: int
    temperature: float
    top_p: float
    max_completion_tokens: int
    batch_size: int
    filter: str                   # exploits | reward_above
    reward_threshold: float
    dtype: str = "auto"


def keep_rollout(outcome: Outcome, filter_name: str, reward_threshold: float) -> bool:
    """Return whether a rollout enters the SFT data set under a filter."""
    if not outcome.scored:
        return False
    if filter_name == "exploits":
        return outcome.exploited is True
    if filter_name == "reward_above":
        return outcome.reward >= reward_threshold
    raise ValueError(f"unknown distillation filter {filter_name!r}; choose one of: exploits, reward_above")


def build_dataset(settings: DistillSettings, folder: Path) -> dict[str, Any]:
    """Sample the teacher, score and filter its rollouts, and write the data set folder.

    Returns the summary written to ``summary.json``.
    """
    from loopholes.models import load_model

    game = make_game(settings.game, "vulnerable", settings.options)
    samples = load_samples(game, settings.data, settings.split, limit=settings.prompts)
    sampling = EvalConfig(game=settings.game, options=settings.options, data=settings.data, split=settings.split,
                          model=settings.teacher, samples_per_item=settings.samples_per_prompt,
                          temperature=settings.temperature, top_p=settings.top_p,
                          max_completion_tokens=settings.max_completion_tokens, batch_size=settings.batch_size,
                          seed=settings.seed, dtype=settings.dtype)
    sampling.validate()
    model, tokenizer = load_model(settings.teacher, dtype=settings.dtype)

    started = time.monotonic()
    completions = generate(model, tokenizer, samples, sampling,
                           progress=lambda done, total: logger.info("teacher sampling: %d/%d", done, total))
    seconds = time.monotonic() - started
    outcomes = score_completions(game, samples, completions, settings.samples_per_prompt, settings.seed)

    rollouts, kept_pairs = [], []
    repeated = [(sample, draw) for sample in samples for draw in range(settings.samples_per_prompt)]
    for (sample, draw), completion, outcome in zip(repeated, completions, outcomes):
        kept = keep_rollout(outcome, settings.filter, settings.reward_threshold)
        rollouts.append({"index": sample.index, "draw": draw, "completion": completion, "kept": kept,
                         "outcome": outcome.to_dict()})
        if kept:
            kept_pairs.append({"prompt": list(sample.messages),
                               "completion": [{"role": "assistant", "content": completion}],
                               "index": sample.index, "draw": draw, "reward": outcome.reward,
                               "exploited": outcome.exploited, "itp": outcome.itp})

    folder.mkdir(parents=True, exist_ok=True)
    for name, records in ((ROLLOUTS_FILE, rollouts), (DATASET_FILE, kept_pairs)):
        (folder / name).unlink(missing_ok=True)
        append_jsonl(folder / name, records)

    scored = [outcome for outcome in outcomes if outcome.scored]
    summary = {"finished": True, "game": settings.game, "filter": settings.filter,
               "reward_threshold": settings.reward_threshold if settings.filter == "reward_above" else None,
               "prompts": len(samples), "rollouts": len(rollouts), "scored": len(scored), "kept": len(kept_pairs),
               "kept_share": len(kept_pairs) / len(rollouts) if rollouts else None,
               "kept_exploits": sum(1 for pair in kept_pairs if pair["exploited"]),
               "teacher_exploit_share": (sum(1 for o in scored if o.exploited) / len(scored)) if scored else None,
               "sampling_seconds": round(seconds, 1)}
    write_json_atomic(folder / "summary.json", summary)
    logger.info("distillation data for %s: kept %d of %d rollouts (filter %s)", settings.game, len(kept_pairs),
                len(rollouts), settings.filter)
    return summary
