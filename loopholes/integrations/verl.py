"""Run a game on verl: parquet export, a ``compute_score`` module, and metrics from verl's logs.

verl trains from parquet files with one prompt per row and scores each
response with a reward function loaded from a file
(``reward.custom_reward_function.path`` and ``.name`` in verl 0.9; the
top-level ``custom_reward_function`` in verl 0.4-0.6). This module is that
file: point verl at it and name :func:`compute_score` (one response per call,
verl's ``naive`` reward manager) or :func:`compute_score_batch` (a whole batch
per call, the ``batch`` reward manager of older verl versions).

:func:`export_verl` writes ``SPLIT.parquet`` in verl's layout:

- ``data_source``: ``loopholes/<game>``;
- ``prompt``: the game's chat messages;
- ``ability``: the game name;
- ``reward_model``: ``{"style": "rule", "ground_truth": ...}``, the target as
  text (JSON for targets that are not strings);
- ``extra_info``: the game name, variant and resolved options (JSON), the split,
  the sample index and the whole sample as JSON, from which the scorer
  rebuilds the exact :class:`~loopholes.games.base.Sample`.

:func:`compute_score` returns ``score`` (the reward) and numeric per-sample
fields that verl averages in its validation metrics, plus ``outcome_record``:
a JSON string with the full outcome that verl writes into its generation dumps
(``trainer.validation_data_dir``, ``trainer.rollout_data_dir``). Set-level
metrics such as the compliance gap come from those dumps through
:func:`summarize_generations` (``loopholes export verl-metrics``), never from
verl's per-batch means.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from loopholes import metrics
from loopholes.games.base import Game, Outcome, Sample, make_game
from loopholes.integrations._records import outcome_from_dict, sample_from_json, sample_to_json

logger = logging.getLogger(__name__)

DATA_SOURCE_PREFIX = "loopholes/"
MANIFEST_FILE = "loopholes_export.json"
#: Keys of every dict that compute_score returns. verl's reward loop reads the
#: key set from the first response of a batch, so every response must have all of them.
RESULT_KEYS = ("score", "intended_task_performance", "exploited", "scored", "expected_reward",
               "sample_index", "draw", "outcome_record")


# -- export -------------------------------------------------------------------


def export_rows(game: Game, samples: Sequence[Sample], split: str) -> list[dict[str, Any]]:
    """Turn a game's samples into verl rows (see the module docstring for the columns)."""
    description = game.describe()
    options_json = json.dumps(description["options"], sort_keys=True)
    rows = []
    for sample in samples:
        target = sample.target
        ground_truth = target if isinstance(target, str) else json.dumps(target, ensure_ascii=False)
        rows.append({
            "data_source": f"{DATA_SOURCE_PREFIX}{game.name}",
            "prompt": [{"role": message["role"], "content": message["content"]} for message in sample.messages],
            "ability": game.name,
            "reward_model": {"style": "rule", "ground_truth": ground_truth},
            "extra_info": {"game": game.name, "variant": game.variant, "options": options_json, "split": split,
                           "index": sample.index, "sample": sample_to_json(sample, game.name)},
        })
    return rows


def export_verl(game_name: str, out_dir: Path, *, variant: str = "vulnerable",
                options: Mapping[str, Any] | None = None, data: str = "builtin",
                splits: Sequence[str] = ("train", "test"), limit: int | None = None) -> dict[str, Any]:
    """Write ``OUT_DIR/SPLIT.parquet`` for each split and a manifest; return the manifest.

    Args:
        game_name: A registered game.
        out_dir: Folder to write; created if missing. Existing files of the
            same names are replaced only once every file has been built.
        variant: ``vulnerable`` or ``secure``; recorded in every row, so the
            reward verl computes follows it.
        options: The game's options (``{name: value}``).
        data: A data source: ``builtin``, a reference-format parquet file or
            folder, or ``hf:NAME``.
        splits: The splits to export, each read from ``data``.
        limit: Export at most this many rows per split.

    Raises:
        ValueError: for an unknown game, variant, option or split, a data
            source that gives no rows, or a game setting that verl cannot run.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from loopholes.data import load_samples

    game = make_game(game_name, variant, options)
    _check_single_generation(game)
    if not splits:
        raise ValueError("no split to export; give one or more splits, e.g. train and test")
    if len(set(splits)) != len(splits):
        raise ValueError(f"splits repeat: {list(splits)}; give each split once")

    tables = {}
    for split in splits:
        samples = load_samples(game, data, split, limit=limit)
        tables[split] = pa.Table.from_pylist(export_rows(game, samples, split))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, table in tables.items():
        path = out_dir / f"{split}.parquet"
        temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            pq.write_table(table, temporary)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        files[split] = {"path": str(path), "rows": table.num_rows}

    manifest = {**game.describe(), "data": data, "files": files,
                "reward_function": {"path": reward_module_path(), "name": "compute_score"}}
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    logger.info("exported %s (%s) to %s: %s", game.name, game.variant, out_dir,
                ", ".join(f"{split} {info['rows']} rows" for split, info in files.items()))
    return manifest


def reward_module_path() -> str:
    """Return the file to give verl as ``custom_reward_function.path``: this module."""
    return str(Path(__file__).resolve())


def _check_single_generation(game: Game) -> None:
    # verl generates one response per prompt and scores it; the two-pass
    # self-report needs a second generation that only the TRL trainer makes.
    if getattr(game.config, "self_report", "inline") == "two-pass":
        raise ValueError("option self_report='two-pass' needs a second generation per response, which verl "
                         "does not make; export with self_report=inline")


# -- scoring ------------------------------------------------------------------

_GAMES: dict[tuple[str, str, str], Game] = {}
_DRAWS: dict[tuple[str, str, str, str, int], int] = {}
_LOCK = threading.Lock()
_PROCESS_SEED: int | None = None


def _game_for(extra_info: Mapping[str, Any]) -> Game:
    key = (str(extra_info["game"]), str(extra_info["variant"]), str(extra_info.get("options") or "{}"))
    with _LOCK:
        game = _GAMES.get(key)
        if game is None:
            game = make_game(key[0], key[1], json.loads(key[2]))
            preflight = getattr(game, "preflight", None)
            if callable(preflight):
                preflight()
            _GAMES[key] = game
    return game


def _next_draw(extra_info: Mapping[str, Any], sample: Sample) -> int:
    # The n responses of a GRPO group share their extra_info, so the draw that
    # separates their audits is the number of earlier scorings of the sample.
    key = (str(extra_info["game"]), str(extra_info["variant"]), str(extra_info.get("options") or "{}"),
           str(extra_info.get("split", "")), sample.index)
    with _LOCK:
        draw = _DRAWS.get(key, 0)
        _DRAWS[key] = draw + 1
    return draw


def _resolve_seed(seed: int | None) -> int:
    global _PROCESS_SEED
    if seed is not None:
        return int(seed)
    with _LOCK:
        if _PROCESS_SEED is None:
            _PROCESS_SEED = random.SystemRandom().getrandbits(62)
            logger.info("loopholes verl reward: process %d draws with seed %d (pass reward_kwargs.seed "
                        "for a fixed seed)", os.getpid(), _PROCESS_SEED)
        return _PROCESS_SEED


def reset_draws() -> None:
    """Forget the per-sample draw counts and the process seed (for tests and new runs in one process)."""
    global _PROCESS_SEED
    with _LOCK:
        _DRAWS.clear()
        _PROCESS_SEED = None


def _read_extra_info(extra_info: Any) -> tuple[Mapping[str, Any], Sample]:
    if not isinstance(extra_info, Mapping) or not {"game", "variant", "sample"} <= set(extra_info):
        keys = sorted(extra_info) if isinstance(extra_info, Mapping) else type(extra_info).__name__
        raise ValueError(f"extra_info lacks the loopholes fields game, variant and sample (got {keys}); "
                         "train on parquet written by `loopholes export verl`")
    return extra_info, sample_from_json(extra_info["sample"])


def result_dict(game: Game, sample: Sample, outcome: Outcome, *, split: str, draw: int, seed: int) -> dict[str, Any]:
    """Build the dict that verl receives for one response (the keys of :data:`RESULT_KEYS`)."""
    record = {"game": game.name, "variant": game.variant, "options": game.describe()["options"], "split": split,
              "index": sample.index, "draw": draw, "seed": seed, "outcome": outcome.to_dict()}
    expected = game.expected_reward(outcome)
    return {
        "score": outcome.reward,
        "intended_task_performance": outcome.itp,
        "exploited": None if outcome.exploited is None else float(outcome.exploited),
        "scored": 1.0 if outcome.scored else 0.0,
        "expected_reward": expected,
        "sample_index": sample.index,
        "draw": draw,
        "outcome_record": json.dumps(record, ensure_ascii=False, default=str),
    }


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Mapping[str, Any] | None = None,
                  *, seed: int | None = None, **kwargs: Any) -> dict[str, Any]:
    """Score one verl response with the game named in its row; verl's ``custom_reward_function``.

    Args:
        data_source: The row's ``data_source`` (``loopholes/<game>``); informational.
        solution_str: The decoded response, scored verbatim.
        ground_truth: The row's ``reward_model.ground_truth``; the scorer uses
            the exact target stored in ``extra_info`` instead.
        extra_info: The row's ``extra_info`` as written by :func:`export_verl`.
        seed: Base seed of the game's randomness (the self-grading audit),
            set through ``reward_kwargs.seed``. Unset, each process draws a
            random seed, so that verl's reward workers (8 processes by
            default) do not repeat each other's audits. The draw of a response
            is the count of earlier scorings of its sample in this process,
            so the responses of a group and of later steps get independent audits.
        **kwargs: Other keywords verl passes (ignored).

    Returns:
        The keys of :data:`RESULT_KEYS`. ``score`` is the reward (0.0 for an
        unscored response). ``intended_task_performance``, ``exploited`` and
        ``expected_reward`` are None where they do not apply, and ``scored``
        is 1.0 or 0.0. ``outcome_record`` is a JSON string of the full
        outcome with the game, variant, options, split, draw and seed.

    Raises:
        ValueError: for a row that was not exported by loopholes. The
            response text never makes this raise.
    """
    info, sample = _read_extra_info(extra_info)
    game = _game_for(info)
    base_seed = _resolve_seed(seed)
    draw = _next_draw(info, sample)
    outcome = game.score(sample, solution_str if isinstance(solution_str, str) else str(solution_str),
                         seed=base_seed, draw=draw)
    return result_dict(game, sample, outcome, split=str(info.get("split", "")), draw=draw, seed=base_seed)


def compute_score_batch(data_sources: Sequence[str], solution_strs: Sequence[str], ground_truths: Sequence[Any],
                        extra_infos: Sequence[Mapping[str, Any]], *, seed: int | None = None,
                        **kwargs: Any) -> list[dict[str, Any]]:
    """Score a batch of verl responses; the reward function of verl's ``batch`` reward manager.

    Responses of the same game, variant and options go to ``Game.score_batch``
    together, so a game with a judge sends them as one batch. Returns one dict
    per response, in order, as :func:`compute_score` does.
    """
    if not len(solution_strs) == len(extra_infos):
        raise ValueError(f"got {len(solution_strs)} responses and {len(extra_infos)} extra_info values; "
                         "they must match")
    base_seed = _resolve_seed(seed)
    parsed = [_read_extra_info(info) for info in extra_infos]
    draws = [_next_draw(info, sample) for info, sample in parsed]

    groups: dict[int, list[int]] = {}
    games: dict[int, Game] = {}
    for position, (info, _) in enumerate(parsed):
        game = _game_for(info)
        groups.setdefault(id(game), []).append(position)
        games[id(game)] = game

    results: list[dict[str, Any] | None] = [None] * len(parsed)
    for key, positions in groups.items():
        game = games[key]
        samples = [parsed[p][1] for p in positions]
        texts = [solution_strs[p] if isinstance(solution_strs[p], str) else str(solution_strs[p]) for p in positions]
        outcomes = game.score_batch(samples, texts, seed=base_seed, draws=[draws[p] for p in positions])
        for position, sample, outcome in zip(positions, samples, outcomes):
            results[position] = result_dict(game, sample, outcome, split=str(parsed[position][0].get("split", "")),
                                            draw=draws[position], seed=base_seed)
    return results  # type: ignore[return-value]


# -- metrics from verl's generation dumps ---------------------------------------


def read_generation_records(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Read JSONL lines from files and folders (every ``*.jsonl`` inside, sorted).

    Raises:
        ValueError: for a missing path, a folder without JSONL files, or a
            line that is not a JSON object (naming the file and line).
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.glob("*.jsonl"), key=_step_order)
            if not found:
                raise ValueError(f"folder {path} has no .jsonl files; give verl's validation_data_dir or "
                                 "rollout_data_dir, or a JSONL file")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"generations path not found: {path}")

    records = []
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"line {number} of {file} is not valid JSON: {error.msg}") from error
            if not isinstance(record, dict):
                raise ValueError(f"line {number} of {file} must be a JSON object")
            records.append(record)
    return records


def _step_order(path: Path) -> tuple[int, str]:
    return (int(path.stem), path.name) if path.stem.isdigit() else (-1, path.name)


def summarize_generations(records: Sequence[Mapping[str, Any]], *, game: str | None = None,
                          variant: str = "vulnerable", options: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Compute a game's set-level metrics from per-response records, one summary per step.

    Accepts verl's generation dumps (lines with ``outcome_record``, written
    when ``compute_score`` is the reward function) and ``loopholes score``
    output (lines with an ``outcome`` dict, which need ``game``). Records are
    grouped by game, variant, options and verl's ``step``; each group gets
    :func:`loopholes.metrics.summarize`, so the compliance gap and every other
    rate is computed over the group's whole set of responses.

    Raises:
        ValueError: for a record with neither field, or an ``outcome`` record
            without ``game``.
    """
    groups: dict[tuple[str, str, str, Any], list[Outcome]] = {}
    for position, record in enumerate(records):
        if "outcome_record" in record:
            scoring = record["outcome_record"]
            scoring = json.loads(scoring) if isinstance(scoring, str) else scoring
            spec = (scoring["game"], scoring["variant"], json.dumps(scoring.get("options") or {}, sort_keys=True))
            outcome = scoring["outcome"]
        elif "outcome" in record:
            if game is None:
                raise ValueError(f"record {position} has an 'outcome' but no game; give the game name")
            spec = (game, variant, json.dumps(dict(options or {}), sort_keys=True))
            outcome = record["outcome"]
            outcome = json.loads(outcome) if isinstance(outcome, str) else outcome
        else:
            raise ValueError(f"record {position} has neither 'outcome_record' (a verl dump scored by "
                             f"loopholes.integrations.verl) nor 'outcome' (loopholes score output); "
                             f"its keys: {sorted(record)}")
        groups.setdefault((*spec, record.get("step")), []).append(outcome_from_dict(outcome))

    summaries = []
    for (name, game_variant, options_json, step), outcomes in groups.items():
        built = make_game(name, game_variant, json.loads(options_json))
        summary = metrics.summarize(built, outcomes)
        summaries.append({"step": step, **summary})
    return summaries
