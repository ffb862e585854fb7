"""The main job: the audited self-grading game on the embedded model, vulnerable next to secure.

Steps, each skipped when its result already exists, so rerunning resumes:

1. evaluate the base model on built-in test questions;
2. train with the vulnerable reward (audit probability 0.1);
3. train with the secure reward (every sample audited), same start and seed;
4. evaluate both trained models on the same questions;
5. write the report (plots and a markdown table) to ``OUTPUT/report``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from loopholes.evaluate import EvalConfig, evaluate
from loopholes.report import build_report
from loopholes.train.grpo import TrainConfig, train

logger = logging.getLogger(__name__)

GAME = "self-grading"


def _evaluate_once(config: EvalConfig, folder: Path) -> dict:
    summary_path = folder / "summary.json"
    if summary_path.is_file():
        logger.info("evaluation in %s exists; skipping", folder)
        return json.loads(summary_path.read_text())
    logger.info("evaluating %s on %d test questions", config.model, config.limit)
    return evaluate(config, folder)


def _train_once(config: TrainConfig, run_dir: Path) -> None:
    if (run_dir / "summary.json").is_file():
        logger.info("run %s finished earlier; skipping", run_dir)
        return
    logger.info("training %s (%s reward) for %d steps", run_dir.name, config.variant, config.steps)
    train(config, run_dir, resume=(run_dir / "config.json").is_file())


def run_demo(output: Path, steps: int = 16, eval_items: int = 64, seed: int = 0) -> Path:
    """Run the demo into ``output`` and return the report's path."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name, action, *args):
        started = time.monotonic()
        result = action(*args)
        timings[name] = timings.get(name, 0.0) + round(time.monotonic() - started, 1)
        return result

    evaluation = EvalConfig(game=GAME, variant="vulnerable", split="test", limit=eval_items, seed=seed)
    timed("evaluate base", _evaluate_once, evaluation, output / "base-eval")

    runs = []
    for variant in ("vulnerable", "secure"):
        run_dir = output / variant
        config = TrainConfig(game=GAME, variant=variant, steps=steps, seed=seed)
        timed(f"train {variant}", _train_once, config, run_dir)
        timed(f"evaluate {variant}", _evaluate_once,
              EvalConfig(**{**evaluation.__dict__, "model": str(run_dir / "final")}), run_dir / "eval" / "final")
        base_copy = run_dir / "eval" / "base"
        base_copy.mkdir(parents=True, exist_ok=True)
        shutil.copy(output / "base-eval" / "summary.json", base_copy / "summary.json")
        runs.append(run_dir)

    report = timed("report", build_report, runs, output / "report")
    (output / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    logger.info("demo stages took %s seconds", timings)
    return report
