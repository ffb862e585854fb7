"""The parts of an experiment: which runs, samplings and evaluations each kind needs.

A *part* is one unit of work with a folder inside the experiment directory:
a GRPO run, an SFT run, a distillation data set, or an evaluation. Parts are
identified by their folder, so two kinds that need the same run (transfer and
persistence both start from the vulnerable-reward run of a game) share it.
Each part's ``spec`` holds every setting that decides its result; model
references in it are experiment-relative (``base``, ``part:runs/...``), so an
experiment folder can be moved.

Folder names::

    runs/GAME-VARIANT-seedS                   GRPO from the base model
    runs/GAME-VARIANT-from-rl-SOURCE-seedS    GRPO from the vulnerable-reward run on SOURCE
    runs/GAME-VARIANT-from-sft-SOURCE-seedS   GRPO from the SFT student distilled from SOURCE
    runs/sft-GAME-seedS                       SFT student distilled from GAME's exploiter
    distillation/GAME-seedS                   the teacher's rollouts and the kept data set
    evals/MODEL/GAME                          evaluation of MODEL on GAME's test split

A run whose steps differ from the training section's gets ``-stepsN`` before the seed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from loopholes.experiments.config import ExperimentConfig, checkpoint_for

BASE = "base"
STUDENT_BASE = "student-base"


@dataclass
class Part:
    """One unit of work: a GRPO run, an SFT run, a distillation data set or an evaluation."""

    key: str                      # folder relative to the experiment directory
    action: str                   # grpo | sft | distill | eval
    spec: dict[str, Any]          # settings that decide the result; model references are experiment-relative
    needs: list[str] = field(default_factory=list)  # keys of parts whose outputs this one reads


class Plan:
    """The ordered, de-duplicated parts of an experiment."""

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.parts: dict[str, Part] = {}

    def add(self, part: Part) -> str:
        existing = self.parts.get(part.key)
        if existing is not None and existing.spec != part.spec:
            # Two kinds asked for one folder with different settings: a bug in the plan.
            raise RuntimeError(f"part {part.key} is planned twice with different settings")
        self.parts.setdefault(part.key, part)
        return part.key

    # -- models -------------------------------------------------------------------

    def exploiter(self, game: str, seed: int) -> str:
        """Return the reference of the vulnerable-reward model of a game: a given checkpoint or a planned run."""
        checkpoint = checkpoint_for(self.config, game, seed)
        if checkpoint is not None:
            return f"path:{checkpoint}"
        return "part:" + self.grpo(game, "vulnerable", seed)

    def grpo(self, game: str, variant: str, seed: int, start: str = BASE, start_label: str = "",
             steps: int | None = None) -> str:
        """Plan a GRPO run and return its key."""
        default_steps = self.config.steps(game)
        steps = default_steps if steps is None else steps
        name = f"{game}-{variant}"
        if start_label:
            name += f"-from-{start_label}"
        if steps != default_steps:
            name += f"-steps{steps}"
        key = f"runs/{name}-seed{seed}"
        training = dataclasses.asdict(self.config.train_config(game, variant, seed, start, steps))
        training.pop("save_every")  # may change between sessions without changing results
        needs = [start[5:]] if start.startswith("part:") else []
        return self.add(Part(key, "grpo", {"training": training}, needs))

    def student(self, game: str, seed: int) -> str:
        """Plan the distillation data set and the SFT student of a game's exploiter; return the SFT key."""
        distillation = self.config.distillation
        teacher = self.exploiter(game, seed)
        data_key = f"distillation/{game}-seed{seed}"
        entry = self.config.games[game]
        training = self.config.train_config(game, "vulnerable", seed, teacher)
        data_spec = {"teacher": teacher, "game": game, "options": entry.options, "data": entry.data,
                     "split": entry.train_split, "seed": seed,
                     "prompts": distillation.prompts if distillation.prompts is not None else training.limit,
                     "samples_per_prompt": distillation.samples_per_prompt,
                     "temperature": distillation.temperature, "top_p": distillation.top_p,
                     "max_completion_tokens": distillation.max_completion_tokens or training.max_completion_tokens,
                     "batch_size": distillation.batch_size, "filter": distillation.filter,
                     "reward_threshold": distillation.reward_threshold, "dtype": training.dtype}
        needs = [teacher[5:]] if teacher.startswith("part:") else []
        self.add(Part(data_key, "distill", data_spec, needs))

        student = self.student_model()
        sft = dataclasses.asdict(self.config.sft_config(f"part:{data_key}", seed, student))
        sft.pop("save_every")
        return self.add(Part(f"runs/sft-{game}-seed{seed}", "sft", {"sft": sft}, [data_key]))

    def student_model(self) -> str:
        student = self.config.distillation.student
        return BASE if student is None or student == self.config.model else f"path:{student}"

    def evaluation(self, model: str, model_label: str, game: str, seed: int) -> str:
        """Plan an evaluation of a model reference on a game and return its key."""
        settings = dataclasses.asdict(self.config.eval_config(game, seed, model))
        settings.pop("batch_size")  # changes speed and memory only
        needs = [model[5:]] if model.startswith("part:") else []
        return self.add(Part(f"evals/{model_label}/{game}", "eval", {"evaluation": settings}, needs))

    def evaluate_part(self, part_key: str, game: str, seed: int) -> str:
        return self.evaluation("part:" + part_key, part_key.split("/", 1)[1], game, seed)

    def evaluate_base(self, game: str) -> str:
        # The base model is evaluated once per game, with the first seed.
        return self.evaluation(BASE, BASE, game, self.config.seeds[0])


def model_label(reference: str) -> str:
    """Return the folder name under ``evals/`` for a model reference."""
    if reference == BASE:
        return BASE
    if reference.startswith("part:"):
        return reference[5:].split("/", 1)[1]
    return "checkpoint-" + reference[5:].strip("/").replace("/", "_")[-60:]


def build_plan(config: ExperimentConfig, kinds: list[str] | None = None) -> Plan:
    """Return the parts that the requested kinds need, dependencies first.

    Seeds are the outer loop, so an interrupted experiment has complete
    results for its first seeds rather than partial results for every seed.
    """
    kinds = kinds or config.kinds
    plan = Plan(config)
    games = list(config.games)
    for game in games:
        plan.evaluate_base(game)

    for seed in config.seeds:
        if "emergence" in kinds:
            for game in games:
                for variant in ("vulnerable", "secure"):
                    plan.evaluate_part(plan.grpo(game, variant, seed), game, seed)

        if "transfer" in kinds:
            for source in games:
                exploiter = plan.exploiter(source, seed)
                for target in games:
                    plan.evaluation(exploiter, model_label(exploiter), target, seed)

        if "catalysis" in kinds:
            steps = config.catalysis.steps
            for source, target in config.catalysis_pairs():
                exploiter = plan.exploiter(source, seed)
                plan.grpo(target, "vulnerable", seed, exploiter, f"rl-{source}", steps)
                plan.grpo(target, "vulnerable", seed, steps=steps)

        if "distillation" in kinds:
            for game in games:
                student = plan.student(game, seed)
                plan.evaluate_part(student, game, seed)
                plan.evaluation(plan.exploiter(game, seed), model_label(plan.exploiter(game, seed)), game, seed)
                if plan.student_model() != BASE:
                    plan.evaluation(plan.student_model(), STUDENT_BASE, game, config.seeds[0])

        if "persistence" in kinds:
            steps = config.persistence.steps
            for game in games:
                starts = {"rl": (plan.exploiter(game, seed), f"rl-{game}"), "base": (BASE, "")}
                if "sft" in config.persistence.starts:
                    starts["sft"] = ("part:" + plan.student(game, seed), f"sft-{game}")
                for start in config.persistence.starts:
                    model, label = starts[start]
                    run = plan.grpo(game, "secure", seed, model, label, steps)
                    plan.evaluate_part(run, game, seed)
    return plan
