"""The five analyses, read from an experiment folder.

:func:`analyze` returns one JSON-ready dict with a section per kind. Each
section reads whatever parts exist, so a partial experiment gives partial
results (``seeds_found`` counts the seeds behind each number).

- **emergence**: per game, vulnerable and secure ITP / ER / reward curves
  averaged over seeds with bands; the first step where ER reaches the
  emergence threshold; the blind-spot flag; final evaluations against the base.
- **transfer**: every exploiter evaluated on every game; the change of ER and
  ITP against the base model per (source, target) cell.
- **catalysis**: vulnerable training on a target game started from the
  source game's exploiter against from the base model: steps to the ER
  threshold and the ER area under the curve (AUC).
- **distillation**: the kept data set, and the SFT student's ER and ITP
  against the student's base model and the teacher.
- **persistence**: secure training from the RL exploiter, the SFT student and
  the base model: ER decay curves, steps until ER falls below the
  persistence threshold, and final evaluations.

The ER of a game is its ``exploit_metric`` (the compliance gap for
compliance) where the game class names one, otherwise ``exploit_ratio``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from loopholes.experiments import aggregate
from loopholes.experiments.config import ExperimentConfig, parse_config
from loopholes.experiments.plan import BASE, STUDENT_BASE, Plan, model_label
from loopholes.train import rundir

logger = logging.getLogger(__name__)

ITP = "intended_task_performance"


def exploit_key(game: str) -> str:
    """Return the summary key of a game's headline exploit ratio."""
    from loopholes.games import game_class

    return getattr(game_class(game), "exploit_metric", "exploit_ratio")


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Rebuild a config from its stored form (``config.json`` of an experiment folder)."""
    raw = dict(data)
    raw["games"] = {name: {key: value for key, value in entry.items() if key != "name"}
                    for name, entry in raw["games"].items()}
    return parse_config(raw)


class Folder:
    """Reads runs and evaluations of one experiment folder, with the plan's folder names."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.config = config_from_dict(json.loads((self.directory / "config.json").read_text()))
        self.plan = Plan(self.config)

    def records(self, key: str) -> list[dict[str, Any]]:
        return [r for r in rundir.read_jsonl(self.directory / key / rundir.METRICS_FILE) if r.get("kind") == "train"]

    def curves(self, keys: list[str], metric: str) -> list[dict[int, dict]]:
        """Return one ``{step: estimate}`` curve per run that has records."""
        found = [aggregate.curve(self.records(key), metric) for key in keys]
        return [points for points in found if points]

    def summary(self, key: str) -> dict[str, Any] | None:
        path = self.directory / key / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def metric(self, key: str, name: str) -> dict | None:
        summary = self.summary(key)
        return summary.get(name) if summary else None

    def exploiter_label(self, game: str, seed: int) -> str:
        return model_label(self.plan.exploiter(game, seed))

    def run_key(self, game: str, variant: str, seed: int, start: str = BASE, label: str = "",
                steps: int | None = None) -> str:
        return self.plan.grpo(game, variant, seed, start, label, steps)


def analyze(experiment_dir: Path) -> dict[str, Any]:
    """Compute every analysis of the config's kinds from an experiment folder."""
    folder = Folder(experiment_dir)
    config = folder.config
    results: dict[str, Any] = {"name": config.name, "model": config.model, "seeds": config.seeds,
                               "games": list(config.games), "kinds": config.kinds,
                               "exploit_keys": {game: exploit_key(game) for game in config.games}}
    for kind, compute in ANALYSES.items():
        if kind in config.kinds:
            results[kind] = compute(folder)
    return results


def _final(folder: Folder, keys: list[str], metric: str) -> dict[str, Any]:
    return aggregate.mean_over_seeds([folder.metric(key, metric) for key in keys])


def emergence(folder: Folder) -> dict[str, Any]:
    config = folder.config
    games = {}
    for game in config.games:
        er = exploit_key(game)
        threshold = config.threshold(game, "emergence")
        base_eval = f"evals/{BASE}/{game}"
        section: dict[str, Any] = {"exploit_key": er, "threshold": threshold, "curves": {},
                                   "first_step_above": {}, "final": {}, "seeds_found": {}}
        run_keys = {}
        for variant in ("vulnerable", "secure"):
            keys = [folder.run_key(game, variant, seed) for seed in config.seeds]
            run_keys[variant] = keys
            section["seeds_found"][variant] = len(folder.curves(keys, er))
            section["curves"][variant] = {metric: aggregate.curve_over_seeds(folder.curves(keys, metric))
                                          for metric in ("reward", ITP, er)}
            section["first_step_above"][variant] = aggregate.steps_to_threshold(
                folder.curves(keys, er), threshold, "above", config.smoothing)
            evals = [f"evals/{key.split('/', 1)[1]}/{game}" for key in keys]
            section["final"][variant] = {"itp": _final(folder, evals, ITP), "er": _final(folder, evals, er),
                                         "itp_change": aggregate.difference_over_seeds(
                                             [folder.metric(k, ITP) for k in evals], folder.metric(base_eval, ITP)),
                                         "er_change": aggregate.difference_over_seeds(
                                             [folder.metric(k, er) for k in evals], folder.metric(base_eval, er))}
        section["final"]["base"] = {"itp": folder.metric(base_eval, ITP), "er": folder.metric(base_eval, er)}
        vulnerable_evals = [f"evals/{k.split('/', 1)[1]}/{game}" for k in run_keys["vulnerable"]]
        secure_evals = [f"evals/{k.split('/', 1)[1]}/{game}" for k in run_keys["secure"]]
        section["vulnerable_minus_secure"] = {
            "er": aggregate.difference_over_seeds([folder.metric(k, er) for k in vulnerable_evals],
                                                  [folder.metric(k, er) for k in secure_evals]),
            "itp": aggregate.difference_over_seeds([folder.metric(k, ITP) for k in vulnerable_evals],
                                                   [folder.metric(k, ITP) for k in secure_evals])}
        section["blind_spot"] = _blind_spot(folder, run_keys["vulnerable"], er, section["curves"]["vulnerable"])
        games[game] = section
    return {"games": games}


def _blind_spot(folder: Folder, keys: list[str], er: str, mean_curves: dict[str, dict]) -> dict[str, Any]:
    rule = folder.config.blind_spot
    per_seed = []
    for key in keys:
        records = folder.records(key)
        if records:
            per_seed.append(aggregate.blind_spot(aggregate.curve(records, "reward"), aggregate.curve(records, ITP),
                                                 aggregate.curve(records, er), rule.min_er_rise, rule.min_itp_rise))

    def as_points(band: dict[str, list]) -> dict[int, dict]:
        return {step: {"value": value} for step, value in zip(band["steps"], band["value"])}

    on_mean = aggregate.blind_spot(as_points(mean_curves["reward"]), as_points(mean_curves[ITP]),
                                   as_points(mean_curves[er]), rule.min_er_rise, rule.min_itp_rise)
    return {"flag": on_mean["flag"], "changes": on_mean["changes"], "rule": {"min_er_rise": rule.min_er_rise,
                                                                           "min_itp_rise": rule.min_itp_rise},
            "per_seed": [entry["flag"] for entry in per_seed],
            "flagged_seeds": sum(1 for entry in per_seed if entry["flag"])}


def transfer(folder: Folder) -> dict[str, Any]:
    config = folder.config
    cells: dict[str, dict[str, Any]] = {}
    for source in config.games:
        cells[source] = {}
        for target in config.games:
            er = exploit_key(target)
            keys = [f"evals/{folder.exploiter_label(source, seed)}/{target}" for seed in config.seeds]
            base_key = f"evals/{BASE}/{target}"
            cell = {"seeds_found": sum(1 for key in keys if folder.summary(key))}
            for name, metric in (("er", er), ("itp", ITP)):
                trained = [folder.metric(key, metric) for key in keys]
                base = folder.metric(base_key, metric)
                cell[name] = {"metric": metric, "trained": aggregate.mean_over_seeds(trained), "base": base,
                              "change": aggregate.difference_over_seeds(trained, base),
                              "per_seed_change": [aggregate.difference_of_two(t, base) if t and base else None
                                                  for t in trained]}
            cells[source][target] = cell
    return {"sources": list(config.games), "targets": list(config.games), "cells": cells}


def catalysis(folder: Folder) -> dict[str, Any]:
    config = folder.config
    steps = config.catalysis.steps
    pairs = []
    for source, target in config.catalysis_pairs():
        er = exploit_key(target)
        threshold = config.threshold(target, "emergence")
        from_source = [folder.run_key(target, "vulnerable", seed, folder.plan.exploiter(source, seed),
                                      f"rl-{source}", steps) for seed in config.seeds]
        from_base = [folder.run_key(target, "vulnerable", seed, steps=steps) for seed in config.seeds]
        entry: dict[str, Any] = {"source": source, "target": target, "exploit_key": er, "threshold": threshold}
        for name, keys in (("from_source", from_source), ("from_base", from_base)):
            curves = folder.curves(keys, er)
            entry[name] = {"seeds_found": len(curves), "curve": aggregate.curve_over_seeds(curves),
                           "steps_to_threshold": aggregate.steps_to_threshold(curves, threshold, "above",
                                                                              config.smoothing),
                           "auc": aggregate.auc_over_seeds(curves)}
        entry["auc_difference"] = aggregate.auc_difference(folder.curves(from_source, er), folder.curves(from_base, er))
        source_step = entry["from_source"]["steps_to_threshold"]["mean_step"]
        base_step = entry["from_base"]["steps_to_threshold"]["mean_step"]
        entry["steps_saved"] = (base_step - source_step) if source_step is not None and base_step is not None else None
        pairs.append(entry)
    return {"pairs": pairs}


def distillation(folder: Folder) -> dict[str, Any]:
    config = folder.config
    games = {}
    student_base_label = BASE if folder.plan.student_model() == BASE else STUDENT_BASE
    for game in config.games:
        er = exploit_key(game)
        data = []
        sft_runs = []
        for seed in config.seeds:
            summary = folder.summary(f"distillation/{game}-seed{seed}")
            if summary:
                data.append({"seed": seed, **{key: summary.get(key) for key in (
                    "filter", "reward_threshold", "prompts", "rollouts", "kept", "kept_share", "kept_exploits",
                    "teacher_exploit_share")}})
            sft = folder.summary(f"runs/sft-{game}-seed{seed}")
            if sft:
                last = sft.get("last_step") or {}
                sft_runs.append({"seed": seed, "examples": sft.get("examples"), "steps": sft.get("steps"),
                                 "last_loss": last.get("loss")})
        students = [f"evals/sft-{game}-seed{seed}/{game}" for seed in config.seeds]
        teachers = [f"evals/{folder.exploiter_label(game, seed)}/{game}" for seed in config.seeds]
        base_key = f"evals/{student_base_label}/{game}"
        section: dict[str, Any] = {"exploit_key": er, "data": data, "sft": sft_runs,
                                   "seeds_found": sum(1 for key in students if folder.summary(key))}
        for name, metric in (("er", er), ("itp", ITP)):
            student = [folder.metric(key, metric) for key in students]
            teacher = [folder.metric(key, metric) for key in teachers]
            base = folder.metric(base_key, metric)
            section[name] = {"metric": metric, "student_base": base, "teacher": aggregate.mean_over_seeds(teacher),
                             "student": aggregate.mean_over_seeds(student),
                             "student_change": aggregate.difference_over_seeds(student, base),
                             "teacher_change": aggregate.difference_over_seeds(teacher, base)}
        games[game] = section
    return {"games": games}


def persistence(folder: Folder) -> dict[str, Any]:
    config = folder.config
    steps = config.persistence.steps
    games = {}
    for game in config.games:
        er = exploit_key(game)
        threshold = config.threshold(game, "persistence")
        starts = {}
        for start in config.persistence.starts:
            keys = []
            for seed in config.seeds:
                if start == "rl":
                    keys.append(folder.run_key(game, "secure", seed, folder.plan.exploiter(game, seed),
                                               f"rl-{game}", steps))
                elif start == "sft":
                    keys.append(folder.run_key(game, "secure", seed, f"part:runs/sft-{game}-seed{seed}",
                                               f"sft-{game}", steps))
                else:
                    keys.append(folder.run_key(game, "secure", seed, steps=steps))
            curves = folder.curves(keys, er)
            first = [points[min(points)] for points in curves]
            last = [points[max(points)] for points in curves]
            evals = [f"evals/{key.split('/', 1)[1]}/{game}" for key in keys]
            starts[start] = {"seeds_found": len(curves), "curve": aggregate.curve_over_seeds(curves),
                             "steps_below": aggregate.steps_to_threshold(curves, threshold, "below", config.smoothing),
                             "start_er": aggregate.mean_over_seeds(first), "end_er": aggregate.mean_over_seeds(last),
                             "auc": aggregate.auc_over_seeds(curves),
                             "final": {"er": _final(folder, evals, er), "itp": _final(folder, evals, ITP)}}
        games[game] = {"exploit_key": er, "threshold": threshold, "starts": starts}
    return {"games": games}


ANALYSES = {"emergence": emergence, "transfer": transfer, "catalysis": catalysis, "distillation": distillation,
            "persistence": persistence}
