"""Sampling a model on a game's evaluation split and scoring it.

The evaluation draws ``samples_per_item`` completions per item at the given
temperature, scores each with the game, and summarises the whole set with
:func:`loopholes.metrics.summarize` (counts and 95% intervals). The reference
study evaluated with 8 samples per item at temperature 0.6, top-p 0.95.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopholes import metrics
from loopholes.data import load_samples
from loopholes.games.base import Game, Outcome, Sample, game_class, make_game, options_for_model

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Settings of one evaluation."""

    game: str = "self-grading"
    variant: str = "vulnerable"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    data: str = "builtin"
    split: str = "test"
    limit: int | None = None           # number of items (None: all)
    model: str = "embedded"
    samples_per_item: int = 1
    temperature: float = 0.6
    top_p: float = 0.95
    max_completion_tokens: int | None = None  # None: the game's default_max_completion_tokens
    batch_size: int = 16               # completions generated at once
    seed: int = 0
    dtype: str = "auto"

    def validate(self) -> None:
        """Raise ValueError naming the setting and its value when one is invalid."""
        for name in ("samples_per_item", "max_completion_tokens", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be 0 (greedy) or positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")


def generate(model, tokenizer, samples: list[Sample], config: EvalConfig, progress=None) -> list[str]:
    """Sample ``samples_per_item`` completions per sample, in order (item-major)."""
    import torch

    max_new_tokens = config.max_completion_tokens or game_class(config.game).default_max_completion_tokens
    prompts = [tokenizer.apply_chat_template(list(sample.messages), tokenize=False, add_generation_prompt=True)
               for sample in samples for _ in range(config.samples_per_item)]
    tokenizer.padding_side = "left"
    torch.manual_seed(config.seed)
    completions: list[str] = []
    for start in range(0, len(prompts), config.batch_size):
        batch = prompts[start:start + config.batch_size]
        inputs = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        sampling = {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p, "top_k": 0}
        if config.temperature == 0:
            sampling = {"do_sample": False}
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens,
                                    pad_token_id=tokenizer.pad_token_id, **sampling)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        completions.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        if progress is not None:
            progress(len(completions), len(prompts))
    return completions


def score_completions(game: Game, samples: list[Sample], completions: list[str], samples_per_item: int,
                      seed: int) -> list[Outcome]:
    """Score item-major completions; the draw index is the completion's number within its item."""
    repeated = [sample for sample in samples for _ in range(samples_per_item)]
    draws = [k for _ in samples for k in range(samples_per_item)]
    return game.score_batch(repeated, completions, seed=seed, draws=draws)


def evaluate(config: EvalConfig, output_dir: Path | None = None, progress=None) -> dict[str, Any]:
    """Evaluate a model in a game; write ``summary.json`` and ``samples.jsonl`` to ``output_dir``.

    Returns the metric summary with the evaluation settings under ``"eval"``.
    """
    from loopholes.models import load_model

    if config.max_completion_tokens is None:
        config.max_completion_tokens = game_class(config.game).default_max_completion_tokens
    config.validate()
    config.options = options_for_model(config.game, config.options, config.model)
    game = make_game(config.game, config.variant, config.options)
    preflight = getattr(game, "preflight", None)
    if callable(preflight):
        preflight()
    samples = load_samples(game, config.data, config.split, limit=config.limit)
    model, tokenizer = load_model(config.model, dtype=config.dtype)

    started = time.monotonic()
    completions = generate(model, tokenizer, samples, config, progress)
    generation_seconds = time.monotonic() - started
    outcomes = score_completions(game, samples, completions, config.samples_per_item, config.seed)

    summary = metrics.summarize(game, outcomes)
    summary["eval"] = {**dataclasses.asdict(config), "items": len(samples),
                       "generation_seconds": round(generation_seconds, 1)}
    if output_dir is not None:
        write_eval(Path(output_dir), summary, samples, completions, outcomes, config.samples_per_item)
    return summary


def write_eval(output_dir: Path, summary: dict[str, Any], samples: list[Sample], completions: list[str],
               outcomes: list[Outcome], samples_per_item: int) -> None:
    """Write the summary and the per-sample records of an evaluation."""
    from loopholes.train.rundir import append_jsonl, write_json_atomic

    output_dir.mkdir(parents=True, exist_ok=True)
    repeated = [sample for sample in samples for _ in range(samples_per_item)]
    records = [{"index": sample.index, "completion": completion, "outcome": outcome.to_dict()}
               for sample, completion, outcome in zip(repeated, completions, outcomes)]
    samples_path = output_dir / "samples.jsonl"
    samples_path.unlink(missing_ok=True)
    append_jsonl(samples_path, records)
    write_json_atomic(output_dir / "summary.json", summary)
