"""The games as Inspect tasks: ``inspect eval loopholes/<game> --model ...``.

Each registered game is an Inspect task named ``loopholes/<game>`` (for
example ``loopholes/self-grading``). Inspect finds them through the
``inspect_ai`` entry point of the ``loopholes`` package, which names this
module. Task parameters (``-T name=value``): ``variant``, ``data``, ``split``,
``limit``, ``seed``, and any of the game's options (``-T audit_probability=0.2``).

The scorer returns one :class:`~inspect_ai.scorer.Score` per response:
``value`` is the reward (NaN where the response is unscored, which Inspect
leaves out of every metric), and ``metadata["outcomes"]`` contains the
game's outcomes. The task's metrics are computed over the whole set of outcomes with
:func:`loopholes.metrics.summarize`: ``intended_task_performance``,
``exploit_ratio`` (the game's exploit metric: the compliance gap for
``compliance``), ``reward``, and ``game_metrics`` with every other rate and the
95% interval bounds. With ``--epochs N`` the N responses of an item are pooled,
not averaged, so the metrics count every response.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.to_thread
from inspect_ai import Epochs, Task, task
from inspect_ai.dataset import MemoryDataset
from inspect_ai.dataset import Sample as InspectSample
from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser, GenerateConfig
from inspect_ai.scorer import Score, SampleScore, Target, metric, score_reducer, scorer
from inspect_ai.solver import Generate, TaskState, solver

from loopholes import metrics as loopholes_metrics
from loopholes.data import load_samples
from loopholes.games.base import Game, Outcome, Sample, game_names, make_game
from loopholes.integrations._records import outcome_from_dict, sample_from_json, sample_to_json

SAMPLE_KEY = "loopholes_sample"
COMPLETION_KEY = "loopholes_completion"
# Sampling defaults of the reference study's evaluation; Inspect's
# --temperature, --top-p and --max-tokens override them.
DEFAULT_CONFIG = GenerateConfig(temperature=0.6, top_p=0.95)


# -- dataset ----------------------------------------------------------------------


def to_inspect_sample(sample: Sample, game: Game) -> InspectSample:
    """Convert a game's sample into an Inspect sample that carries the original as JSON."""
    roles = {"system": ChatMessageSystem, "user": ChatMessageUser, "assistant": ChatMessageAssistant}
    messages = []
    for message in sample.messages:
        if message["role"] not in roles:
            raise ValueError(f"sample {sample.index} of game {game.name!r} has a message with role "
                             f"{message['role']!r}; Inspect accepts system, user and assistant")
        messages.append(roles[message["role"]](content=message["content"]))
    target = sample.target if isinstance(sample.target, str) else json.dumps(sample.target, ensure_ascii=False)
    return InspectSample(input=messages, target=target, id=sample.index,
                         metadata={SAMPLE_KEY: sample_to_json(sample, game.name)})


# -- solver -------------------------------------------------------------------------


@solver
def respond(two_pass: bool = False):
    """Generate the response; with ``two_pass`` ask for the self-report in a second generation.

    Args:
        two_pass: Self-grading's ``self_report=two-pass``: the first
            generation answers, the second (after the game's self-report
            request) writes the self-report, and the scorer reads both joined.
    """

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        state = await generate(state)
        if not two_pass:
            return state
        answer = state.output.completion
        state.messages.append(ChatMessageUser(content=_self_report_request()))
        state = await generate(state)
        state.store.set(COMPLETION_KEY, f"{answer.rstrip()}\n{state.output.completion.strip()}")
        return state

    return solve


def _self_report_request() -> str:
    from loopholes.games.self_grading import SELF_REPORT_REQUEST

    return SELF_REPORT_REQUEST


# -- scorer, reducer and metrics ----------------------------------------------------------


@scorer(metrics=[])
def game_outcome(game: str, variant: str = "vulnerable", options: dict[str, Any] | None = None, seed: int = 0):
    """Score a response with a game and keep its outcome.

    Args:
        game: A registered game name.
        variant: ``vulnerable`` or ``secure``.
        options: The game's options.
        seed: Base seed of the game's randomness. The draw of a response is
            its epoch minus one, so epoch k of item i gets the same audit as
            the k-th line of item i in ``loopholes score --seed SEED``.

    Returns a score whose value is the reward, or NaN for an unscored
    response (a judge or sandbox failure), which Inspect counts as unscored.
    """
    built = make_game(game, variant, options)
    preflight = getattr(built, "preflight", None)
    if callable(preflight):
        preflight()

    # The first scoring loads what the game loads lazily (a tokenizer, a judge
    # model, sandbox workers); concurrent first calls raced on transformers'
    # lazy imports, so the first call runs alone.
    first_call = anyio.Lock()
    warmed = False

    async def score(state: TaskState, target: Target) -> Score:
        nonlocal warmed
        sample = sample_from_json(state.metadata[SAMPLE_KEY])
        completion = state.store.get(COMPLETION_KEY) or state.output.completion
        draw = max(0, state.epoch - 1)

        def run() -> Outcome:
            return built.score(sample, completion, seed=seed, draw=draw)

        # NOTE: scoring runs in worker threads so a judge or sandbox does not
        # block Inspect's event loop; each game must score thread-safely.
        if warmed:
            outcome = await anyio.to_thread.run_sync(run)
        else:
            async with first_call:
                outcome = await anyio.to_thread.run_sync(run)
                warmed = True
        record = {**outcome.to_dict(), "index": sample.index, "draw": draw}
        return Score(value=outcome.reward if outcome.scored else math.nan, answer=completion,
                     explanation=_explain(outcome), metadata={"outcomes": [record]})

    return score


def _explain(outcome: Outcome) -> str:
    if not outcome.scored:
        return f"unscored: {outcome.details.get('unscored_reason')}"
    return f"reward {outcome.reward:g}, ITP {outcome.itp}, exploited {outcome.exploited}"


@score_reducer(name="pool_outcomes")
def pool_outcomes():
    """Reduce an item's epochs to one score that keeps every response's outcome.

    The value is the mean reward of the scored responses (NaN if none is
    scored); ``metadata["outcomes"]`` lists all of them, so the set-level
    metrics count each response once.
    """

    def reduce(scores: list[Score]) -> Score:
        values = [float(s.value) for s in scores if isinstance(s.value, int | float) and not math.isnan(s.value)]
        outcomes = [record for s in scores for record in (s.metadata or {}).get("outcomes", [])]
        value = sum(values) / len(values) if values else math.nan
        answer = scores[0].answer if len(scores) == 1 else None
        explanation = scores[0].explanation if len(scores) == 1 else f"{len(scores)} responses pooled"
        return Score(value=value, answer=answer, explanation=explanation, metadata={"outcomes": outcomes})

    return reduce


def summarize_scores(game: Game, scores: Sequence[SampleScore]) -> dict[str, Any]:
    """Compute the game's metrics over every outcome in a list of Inspect sample scores."""
    outcomes = [outcome_from_dict(record) for sample_score in scores
                for record in (sample_score.score.metadata or {}).get("outcomes", [])]
    return loopholes_metrics.summarize(game, outcomes)


def exploit_metric_name(game: Game) -> str:
    """Return the summary key that is the game's exploit ratio (``compliance_gap`` for compliance)."""
    return getattr(game, "exploit_metric", "exploit_ratio")


def _is_estimate(value: Any) -> bool:
    return isinstance(value, Mapping) and {"value", "ci_low", "ci_high", "n"} <= set(value)


def _value(estimate: Any) -> float:
    if isinstance(estimate, Mapping) and estimate.get("value") is not None:
        return float(estimate["value"])
    return math.nan


@metric(name="intended_task_performance")
def intended_task_performance(game: str, variant: str = "vulnerable", options: dict[str, Any] | None = None):
    """Intended task performance over all scored responses (NaN where none is scored)."""
    built = make_game(game, variant, options)

    def compute(scores: list[SampleScore]) -> float:
        return _value(summarize_scores(built, scores)["intended_task_performance"])

    return compute


@metric(name="exploit_ratio")
def exploit_ratio(game: str, variant: str = "vulnerable", options: dict[str, Any] | None = None):
    """The game's exploit ratio over all scored responses; for compliance, the compliance gap."""
    built = make_game(game, variant, options)

    def compute(scores: list[SampleScore]) -> float:
        return _value(summarize_scores(built, scores)[exploit_metric_name(built)])

    return compute


@metric(name="reward")
def mean_reward(game: str, variant: str = "vulnerable", options: dict[str, Any] | None = None):
    """Mean reward over all scored responses."""
    built = make_game(game, variant, options)

    def compute(scores: list[SampleScore]) -> float:
        return _value(summarize_scores(built, scores)["reward"])

    return compute


@metric(name="game_metrics")
def game_metrics(game: str, variant: str = "vulnerable", options: dict[str, Any] | None = None):
    """Every other set-level rate of the game, the 95% interval bounds of ITP and ER, and the count."""
    built = make_game(game, variant, options)

    def compute(scores: list[SampleScore]) -> dict[str, float]:
        summary = summarize_scores(built, scores)
        values: dict[str, float] = {"n_scored": float(summary["n_scored"])}
        headline = {"intended_task_performance": "itp", exploit_metric_name(built): "er"}
        for key, estimate in summary.items():
            if not _is_estimate(estimate) or estimate["value"] is None:
                continue
            if key in headline:
                values[f"{headline[key]}_ci_low"] = float(estimate["ci_low"])
                values[f"{headline[key]}_ci_high"] = float(estimate["ci_high"])
            elif key not in ("reward", "exploit_ratio"):
                values[key] = float(estimate["value"])
        return values

    return compute


# -- tasks --------------------------------------------------------------------------------


def game_task(game: str, variant: str = "vulnerable", data: str = "builtin", split: str = "test",
              limit: int | None = None, seed: int = 0, **options: Any) -> Task:
    """Build the Inspect task of a game.

    Args:
        game: A registered game name.
        variant: ``vulnerable`` or ``secure``.
        data: ``builtin``, a reference-format parquet file or folder, or ``hf:NAME``.
        split: The split to evaluate on.
        limit: Use at most this many items (Inspect's ``--limit`` also works).
        seed: Base seed of the game's randomness (the audit draw).
        **options: The game's options.

    Raises:
        ValueError: for an unknown game, variant or option, or unusable data.
    """
    built = make_game(game, variant, options)
    resolved = built.describe()["options"]
    samples = load_samples(built, data, split, limit=limit)
    dataset = MemoryDataset([to_inspect_sample(sample, built) for sample in samples], name=f"loopholes/{game}")
    metric_arguments = {"game": game, "variant": variant, "options": resolved}
    two_pass = getattr(built.config, "self_report", "inline") == "two-pass"
    return Task(
        dataset=dataset,
        solver=respond(two_pass=two_pass),
        scorer=game_outcome(game, variant, resolved, seed),
        metrics=[intended_task_performance(**metric_arguments), exploit_ratio(**metric_arguments),
                 mean_reward(**metric_arguments), game_metrics(**metric_arguments)],
        epochs=Epochs(1, pool_outcomes()),
        config=DEFAULT_CONFIG,
        metadata={"game": game, "variant": variant, "options": resolved, "data": data, "split": split},
    )


def _register_task(game: str):
    def build(variant: str = "vulnerable", data: str = "builtin", split: str = "test", limit: int | None = None,
              seed: int = 0, **options: Any) -> Task:
        return game_task(game, variant=variant, data=data, split=split, limit=limit, seed=seed, **options)

    build.__name__ = game.replace("-", "_")
    build.__qualname__ = build.__name__
    build.__doc__ = f"The {game} game as an Inspect task; -T sets variant, data, split, limit, seed and game options."
    return task(name=_task_name(game, build))(build)


def _task_name(game: str, function: Any) -> str:
    # Inspect prefixes a task's name with its package only where it finds an
    # installed distribution with the module. From a source checkout holding a
    # loopholes.egg-info folder (left by `pip install -e .`) it finds that
    # folder instead and adds no prefix, so the prefix is added here.
    from inspect_ai._util.package import get_installed_package_name

    return game if get_installed_package_name(function) == "loopholes" else f"loopholes/{game}"


TASKS = {name: _register_task(name) for name in game_names()}
