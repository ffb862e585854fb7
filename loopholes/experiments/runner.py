"""Running an experiment: check everything first, then do each part that has no result yet.

The experiment folder::

    EXPERIMENT_DIR/
      experiment.yaml   the config as given (when run from a file)
      config.json       the resolved config
      parts.json        every part's settings, status (finished / skipped / running) and seconds
      runs/ distillation/ evals/   the parts (see loopholes.experiments.plan)
      results.json      the analyses of loopholes.experiments.analysis

A part is finished when its folder has ``summary.json``. Rerunning skips
finished parts, resumes a killed GRPO or SFT run from its newest checkpoint,
and redoes a killed evaluation or data set from the start. A part whose
folder was made with other settings stops the run before any work, naming
the settings that differ.

NOTE: the runner is written for one process. Under ``accelerate launch`` every
process would run the evaluations and data sets too; that path is untested.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from loopholes.experiments.config import ConfigError, ExperimentConfig
from loopholes.experiments.plan import BASE, Part, Plan, build_plan
from loopholes.train.rundir import write_json_atomic

logger = logging.getLogger(__name__)

MANIFEST_FILE = "parts.json"
CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
SUMMARY_FILE = "summary.json"


def is_experiment_dir(path: Path) -> bool:
    """Return True for a folder written by :func:`run_experiment`."""
    return (Path(path) / MANIFEST_FILE).is_file() and (Path(path) / CONFIG_FILE).is_file()


def read_manifest(experiment_dir: Path) -> dict[str, dict[str, Any]]:
    path = Path(experiment_dir) / MANIFEST_FILE
    return json.loads(path.read_text())["parts"] if path.is_file() else {}


class Runner:
    """Checks and executes the parts of one experiment in one folder."""

    def __init__(self, config: ExperimentConfig, experiment_dir: Path, kinds: list[str] | None = None):
        self.config = config
        self.directory = Path(experiment_dir)
        self.kinds = kinds or config.kinds
        unknown = [kind for kind in self.kinds if kind not in config.kinds]
        if unknown:
            raise ConfigError(f"kind {unknown[0]!r} is not in this config's kinds ({', '.join(config.kinds)})")
        self.plan: Plan = build_plan(config, self.kinds)
        self.manifest = read_manifest(self.directory)

    # -- checks -------------------------------------------------------------------

    def check(self) -> None:
        """Check models, checkpoints, data and existing parts; raise ConfigError before any work."""
        self._check_models()
        self._check_data()
        self._check_parts()

    def _check_models(self) -> None:
        from loopholes.models import resolve_model_path

        references = [("model", self.config.model)]
        if self.config.distillation.student:
            references.append(("distillation.student", self.config.distillation.student))
        for game, paths in self.config.checkpoints.items():
            references.extend((f"checkpoints.{game}", path) for path in paths)
        for key, name in references:
            try:
                resolve_model_path(name)
            except ValueError as error:
                raise ConfigError(f"{key}: {error}") from error

    def _check_data(self) -> None:
        from loopholes.data import load_samples
        from loopholes.games import make_game

        for name, entry in self.config.games.items():
            game = make_game(name, "vulnerable", entry.options)
            preflight = getattr(game, "preflight", None)
            if callable(preflight):
                try:
                    preflight()
                except (ValueError, OSError) as error:
                    raise ConfigError(f"games.{name}: {error}") from error
            try:
                train = len(load_samples(game, entry.data, entry.train_split))
                test = len(load_samples(game, entry.data, entry.test_split))
            except ValueError as error:
                raise ConfigError(f"games.{name}.data: {error}") from error

            training = self.config.train_config(name, "vulnerable", self.config.seeds[0], BASE)
            evaluation = self.config.eval_config(name, self.config.seeds[0], BASE)
            sizes = [("training.limit", training.limit, train, entry.train_split),
                     ("evaluation.items", evaluation.limit, test, entry.test_split)]
            if "distillation" in self.kinds:
                sizes.append(("distillation.prompts", self.config.distillation.prompts, train, entry.train_split))
            if training.prompts_per_step > min(train, training.limit or train):
                raise ConfigError(f"training.prompts_per_step: {training.prompts_per_step} exceeds the "
                                  f"{min(train, training.limit or train)} training prompts of game {name!r}; "
                                  f"lower it for this game under games.{name}.training")
            for key, asked, available, split in sizes:
                if asked is not None and asked > available:
                    raise ConfigError(f"{key}: {asked} exceeds the {available} {split} items of game {name!r} "
                                      f"from {entry.data!r}; lower it or set it to null (all)")

    def _check_parts(self) -> None:
        for part in self.plan.parts.values():
            folder = self.directory / part.key
            recorded = self.manifest.get(part.key)
            if recorded is not None and not folder.exists():
                # The folder was removed (to redo the part) or never made (a skipped part).
                del self.manifest[part.key]
                continue
            if recorded is None:
                if folder.exists() and any(folder.iterdir()):
                    raise ConfigError(f"{folder} exists but is not recorded in {MANIFEST_FILE}; "
                                      "use a new output folder or remove it")
                continue
            differences = spec_differences(recorded["spec"], part.spec)
            if differences:
                raise ConfigError(f"{part.key} was made with other settings ({'; '.join(differences[:5])}); "
                                  f"use a new output folder, or delete {folder} to redo it")

    # -- execution ----------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Execute every unfinished part in order and write ``results.json``; return the results."""
        from loopholes.experiments.analysis import analyze

        self.directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.directory / CONFIG_FILE, self.config.to_dict())
        parts = list(self.plan.parts.values())
        for number, part in enumerate(parts, start=1):
            self._run_part(part, number, len(parts))

        results = analyze(self.directory)
        write_json_atomic(self.directory / RESULTS_FILE, results)
        logger.info("experiment %s: results written to %s", self.config.name, self.directory / RESULTS_FILE)
        return results

    def _run_part(self, part: Part, number: int, total: int) -> None:
        folder = self.directory / part.key
        label = f"part {number}/{total} {part.key} ({part.action})"
        if (folder / SUMMARY_FILE).is_file():
            logger.info("%s: finished earlier; skipping", label)
            self._record(part, "finished")
            return
        blocked = [need for need in part.needs if self.manifest.get(need, {}).get("status") == "skipped"]
        reason = f"needs {blocked[0]}, which was skipped" if blocked else self._empty_data_reason(part)
        if reason:
            logger.warning("%s: skipped because it %s", label, reason)
            self._record(part, "skipped", reason=reason)
            return

        logger.info("%s: starting", label)
        self._record(part, "running")
        started = time.monotonic()
        ACTIONS[part.action](self, part, folder)
        self._record(part, "finished", seconds=time.monotonic() - started)

    def _empty_data_reason(self, part: Part) -> str | None:
        if part.action != "sft":
            return None
        data_summary = json.loads((self.directory / part.needs[0] / SUMMARY_FILE).read_text())
        if data_summary["kept"] == 0:
            return (f"has no training data: no teacher rollout passed the {data_summary['filter']!r} filter "
                    f"({data_summary['rollouts']} rollouts)")
        return None

    def _record(self, part: Part, status: str, seconds: float = 0.0, reason: str | None = None) -> None:
        entry = self.manifest.get(part.key, {"seconds": 0.0})
        entry.update(action=part.action, spec=part.spec, status=status, reason=reason,
                     seconds=round(entry.get("seconds", 0.0) + seconds, 1))
        self.manifest[part.key] = entry
        write_json_atomic(self.directory / MANIFEST_FILE, {"parts": self.manifest})

    def resolve(self, reference: str) -> str:
        """Return a loadable model path or name for an experiment-relative model reference."""
        if reference == BASE:
            return self.config.model
        if reference.startswith("part:"):
            # A run directory's config.json is not a model config, so point at its final model.
            return str(self.directory / reference[5:] / "final")
        if reference.startswith("path:"):
            return reference[5:]
        raise ValueError(f"invalid model reference {reference!r}")

    # -- actions ------------------------------------------------------------------

    def _grpo(self, part: Part, folder: Path) -> None:
        from loopholes.train.grpo import TrainConfig, train

        settings = dict(part.spec["training"])
        game = settings["game"]
        settings["model"] = self.resolve(settings["model"])
        settings["save_every"] = self.config.train_config(game, "vulnerable", 0, BASE).save_every
        train(TrainConfig(**settings), folder, resume=(folder / "config.json").is_file())

    def _sft(self, part: Part, folder: Path) -> None:
        from loopholes.experiments.distill import DATASET_FILE
        from loopholes.train.sft import SFTTrainConfig, train_sft

        settings = dict(part.spec["sft"])
        settings["dataset"] = str(self.directory / settings["dataset"][5:] / DATASET_FILE)
        settings["model"] = self.resolve(settings["model"])
        settings["save_every"] = self.config.sft_config(Path(settings["dataset"]), 0, BASE).save_every
        train_sft(SFTTrainConfig(**settings), folder, resume=(folder / "config.json").is_file())

    def _distill(self, part: Part, folder: Path) -> None:
        from loopholes.experiments.distill import DistillSettings, build_dataset

        settings = dict(part.spec)
        settings["teacher"] = self.resolve(settings["teacher"])
        build_dataset(DistillSettings(**settings), folder)

    def _evaluate(self, part: Part, folder: Path) -> None:
        from loopholes.evaluate import EvalConfig, evaluate

        settings = dict(part.spec["evaluation"])
        settings["model"] = self.resolve(settings["model"])
        settings["batch_size"] = self.config.eval_config(settings["game"], 0, BASE).batch_size
        evaluate(EvalConfig(**settings), folder)


ACTIONS = {"grpo": Runner._grpo, "sft": Runner._sft, "distill": Runner._distill, "eval": Runner._evaluate}


def spec_differences(stored: Any, wanted: Any, prefix: str = "") -> list[str]:
    """List the settings that differ between two specs as ``key: stored -> wanted``."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        differences = []
        for key in sorted(set(stored) | set(wanted)):
            where = f"{prefix}.{key}" if prefix else str(key)
            differences.extend(spec_differences(stored.get(key), wanted.get(key), where))
        return differences
    # JSON turns tuples into lists; compare in that form.
    if json.loads(json.dumps(stored, default=str)) != json.loads(json.dumps(wanted, default=str)):
        return [f"{prefix}: {stored!r} -> {wanted!r}"]
    return []


def run_experiment(config: ExperimentConfig, experiment_dir: Path, kinds: list[str] | None = None,
                   source_text: str | None = None) -> dict[str, Any]:
    """Check an experiment, run its unfinished parts and return the analyses.

    Args:
        config: The validated experiment config.
        experiment_dir: The experiment folder; created when missing, resumed when present.
        kinds: Run only these kinds (and the parts they need); None runs the config's kinds.
        source_text: The YAML text the config came from, stored as ``experiment.yaml``.

    Raises:
        ConfigError: for a missing model or checkpoint, unusable data, sizes
            beyond the data, or parts made with other settings; raised before any work.
    """
    runner = Runner(config, experiment_dir, kinds)
    runner.check()
    if source_text is not None:
        runner.directory.mkdir(parents=True, exist_ok=True)
        (runner.directory / "experiment.yaml").write_text(source_text)
    return runner.run()


def plan_status(config: ExperimentConfig, experiment_dir: Path, kinds: list[str] | None = None) -> list[dict[str, Any]]:
    """Return each planned part with its status in the folder (finished, skipped, pending)."""
    runner = Runner(config, experiment_dir, kinds)
    rows = []
    for part in runner.plan.parts.values():
        recorded = runner.manifest.get(part.key, {})
        finished = (runner.directory / part.key / SUMMARY_FILE).is_file()
        rows.append({"part": part.key, "action": part.action,
                     "status": "finished" if finished else recorded.get("status", "pending"),
                     "seconds": recorded.get("seconds", 0.0)})
    return rows

