"""A game's scorer as a TRL reward function.

TRL's ``GRPOTrainer`` calls each reward function with ``prompts``,
``completions``, ``completion_ids``, every dataset column (one value per
completion) and ``trainer_state`` / ``log_metric`` as keywords, and expects one
float per completion. :func:`reward_function` returns such a callable for any
game, for users who keep their own GRPO scripts::

    from loopholes.integrations.trl import build_dataset, reward_function

    game, dataset = build_dataset("self-grading", "builtin", split="train")
    reward = reward_function(game, dataset_samples=dataset.samples)
    trainer = GRPOTrainer(model=..., reward_funcs=[reward], train_dataset=dataset.hf, ...)

The dataset carries a ``sample_index`` column that maps each completion back
to its sample; every completion is scored with the game, and the step's ITP,
exploit ratio and the game's extra rates are logged through ``log_metric``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from loopholes import metrics
from loopholes.games.base import Game, Outcome, Sample, derive_seed, make_game

logger = logging.getLogger(__name__)


@dataclass
class GameDataset:
    """Samples of a game and the Hugging Face dataset TRL trains on."""

    samples: list[Sample]
    hf: Any  # datasets.Dataset with "prompt" (chat messages) and "sample_index"


def to_hf_dataset(samples: Sequence[Sample]):
    """Build the TRL prompt dataset: conversational ``prompt`` plus ``sample_index``."""
    import datasets

    return datasets.Dataset.from_dict({
        "prompt": [list(sample.messages) for sample in samples],
        "sample_index": [sample.index for sample in samples],
    })


def build_dataset(game: str | Game, source: str = "builtin", split: str = "train", *,
                  variant: str = "vulnerable", options: Mapping[str, Any] | None = None,
                  limit: int | None = None) -> tuple[Game, GameDataset]:
    """Load a game's samples from a data source and wrap them for TRL."""
    from loopholes.data import load_samples

    game = game if isinstance(game, Game) else make_game(game, variant, options)
    samples = load_samples(game, source, split, limit=limit)
    return game, GameDataset(samples, to_hf_dataset(samples))


def completion_text(completion: Any) -> str:
    """Return the text of a TRL completion: a string, or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(message.get("content", "")) for message in completion if isinstance(message, dict))
    return str(completion)


def reward_function(game: str | Game, variant: str = "vulnerable", options: Mapping[str, Any] | None = None, *,
                    dataset_samples: Sequence[Sample], seed: int = 0,
                    on_outcomes: Callable[[int, list[Sample], list[str], list[Outcome]], None] | None = None,
                    log_prefix: str = "loopholes"):
    """Return a TRL reward function that scores completions with a game.

    Args:
        game: A game object, or a registered game name built with ``variant`` and ``options``.
        dataset_samples: The samples behind the training dataset; the
            dataset's ``sample_index`` column selects one per completion.
        seed: Base seed of the game's randomness (the audit draw). The draw of
            each completion derives from this seed, the training step, the
            sample and the completion's position in its group.
        on_outcomes: Called after each batch with ``(step, samples,
            completions, outcomes)``; the trainer uses it to write metric records.
        log_prefix: Prefix of the metric names passed to TRL's ``log_metric``.

    Returns:
        A callable with TRL's keyword contract. Unscored completions get
        reward 0.0 (TRL needs a number) and are excluded from the logged metrics.
    """
    game = game if isinstance(game, Game) else make_game(game, variant, options)
    by_index = {sample.index: sample for sample in dataset_samples}

    def reward(prompts: list, completions: list, sample_index: list[int] | None = None, **kwargs: Any) -> list[float]:
        if sample_index is None:
            raise ValueError("the training dataset needs a 'sample_index' column; build it with "
                             "loopholes.integrations.trl.build_dataset")
        state = kwargs.get("trainer_state")
        step = int(getattr(state, "global_step", 0)) + 1
        texts = [completion_text(completion) for completion in completions]
        samples = [by_index[int(index)] for index in sample_index]

        # TRL repeats each prompt num_generations times; the position within
        # the repeats becomes the draw so a group gets independent audits.
        seen: dict[int, int] = {}
        draws = []
        for sample in samples:
            draws.append(seen.get(sample.index, 0))
            seen[sample.index] = draws[-1] + 1
        outcomes = game.score_batch(samples, texts, seed=derive_seed(seed, step), draws=draws)

        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            for name, value in step_scalars(game, outcomes).items():
                log_metric(f"{log_prefix}/{name}", value)
        if on_outcomes is not None:
            on_outcomes(step, samples, texts, outcomes)
        return [outcome.reward for outcome in outcomes]

    reward.__name__ = f"{game.name}_{game.variant}"
    return reward


def step_scalars(game: Game, outcomes: Sequence[Outcome]) -> dict[str, float]:
    """Return the point values of a batch's metrics, for TRL's logs and TensorBoard."""
    summary = metrics.summarize(game, outcomes)
    scalars = {"n_unscored": float(summary["n_unscored"])}
    for key, value in summary.items():
        if isinstance(value, dict) and value.get("value") is not None:
            scalars[key] = float(value["value"])
        elif isinstance(value, int | float) and not isinstance(value, bool) and key not in ("n", "n_scored"):
            scalars.setdefault(key, float(value))
    return scalars
