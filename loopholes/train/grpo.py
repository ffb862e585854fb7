"""GRPO training in a game, on TRL's GRPOTrainer.

The trainer stays generic: the game arrives as a TRL reward function
(:func:`loopholes.integrations.trl.reward_function`), and a callback writes
one record per optimiser step to the run directory's ``metrics.jsonl`` with
the step's reward, ITP, exploit ratio and the game's extra rates, each over
the step's whole group of completions with a 95% confidence interval.

Each optimiser step samples ``prompts_per_step`` prompts x ``group_size``
completions and takes one gradient step on them (no gradient accumulation,
one step per generation batch), so a metric record maps to exactly one batch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopholes import metrics
from loopholes.data import PROMPT_LENGTH_POLICIES, fit_prompt_length, load_samples
from loopholes.games.base import VARIANTS, Game, Outcome, Sample, game_class, make_game, options_for_model
from loopholes.train import rundir

logger = logging.getLogger(__name__)

LOSS_TYPES = ("dapo", "grpo", "dr_grpo", "bnpo")
SCALE_REWARDS = ("group", "batch", "none")


@dataclass
class TrainConfig:
    """Hyper-parameters of one GRPO run. Units are given per field."""

    game: str = "self-grading"
    variant: str = "vulnerable"
    options: dict[str, Any] = field(default_factory=dict)
    data: str = "builtin"
    split: str = "train"
    limit: int | None = None              # number of training prompts to load (None: all)
    model: str = "embedded"
    steps: int = 10                       # optimiser steps
    prompts_per_step: int = 2
    group_size: int = 8                   # completions per prompt (GRPO group)
    max_completion_tokens: int | None = None  # None: the game's default_max_completion_tokens
    learning_rate: float = 1e-5
    temperature: float = 0.7              # 1.0 makes the 135M embedded model write near-garbage
    top_p: float = 1.0
    clip_epsilon: float = 0.2
    beta: float = 0.0                     # KL penalty coefficient (the reference study used none)
    loss_type: str = "dapo"               # token-mean over the batch
    scale_rewards: str = "group"
    lora: bool = False
    lora_rank: int = 16
    lora_alpha: int = 32
    seed: int = 0
    dtype: str = "auto"                   # mixed-precision setting: auto, float32 or bfloat16
    device: str = "auto"                  # auto, cpu or cuda
    save_every: int = 5                   # steps between checkpoints
    max_prompt_tokens: int | None = None
    prompt_length_policy: str = "keep"
    grpo_overrides: dict[str, Any] = field(default_factory=dict)  # extra GRPOConfig fields (vLLM, DeepSpeed)

    def validate(self) -> None:
        """Raise ValueError naming the setting and its value when one is invalid."""
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of: {', '.join(VARIANTS)}")
        positive = ("steps", "prompts_per_step", "max_completion_tokens", "save_every", "lora_rank")
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be at least 2 (GRPO compares completions within a group), "
                             f"got {self.group_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0 < self.temperature <= 5:
            raise ValueError(f"temperature must lie in (0, 5], got {self.temperature}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {self.loss_type!r}; choose one of: {', '.join(LOSS_TYPES)}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"unknown scale_rewards {self.scale_rewards!r}; choose one of: {', '.join(SCALE_REWARDS)}")
        if self.prompt_length_policy not in PROMPT_LENGTH_POLICIES:
            raise ValueError(f"unknown prompt_length_policy {self.prompt_length_policy!r}; "
                             f"choose one of: {', '.join(PROMPT_LENGTH_POLICIES)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"unknown device {self.device!r}; choose one of: auto, cpu, cuda")


def versions() -> dict[str, str]:
    """Return the versions of the packages that decide a run's behaviour."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("loopholes", "torch", "transformers", "trl", "peft", "accelerate"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


class StepRecorder:
    """Collects each step's outcomes from the reward function and writes records.

    The reward function calls :meth:`add` while TRL computes advantages; the
    callback's ``on_step_end`` calls :meth:`flush` once the optimiser step is done.
    """

    def __init__(self, game: Game, run_dir: Path, tokenizer):
        self.game = game
        self.run_dir = run_dir
        self.tokenizer = tokenizer
        self.pending: list[tuple[Sample, str, Outcome, int]] = []
        self.step_started = time.monotonic()

    def add(self, step: int, samples: list[Sample], texts: list[str], outcomes: list[Outcome]) -> None:
        for sample, text, outcome in zip(samples, texts, outcomes):
            self.pending.append((sample, text, outcome, step))

    def flush(self, step: int, total_steps: int) -> dict[str, Any] | None:
        # Under accelerate every process scores its own share of the batch;
        # the main process gathers all of them and writes one record per step.
        local = [(sample.index, text, outcome, len(self.tokenizer(text, add_special_tokens=False)["input_ids"]))
                 for sample, text, outcome, _ in self.pending]
        self.pending.clear()
        gathered = _gather_from_processes(local)
        if not gathered or not _is_main_process():
            return None
        outcomes = [outcome for _, _, outcome, _ in gathered]
        lengths = [length for _, _, _, length in gathered]
        record = {"kind": "train", "step": step, "time": time.time(),
                  "step_seconds": round(time.monotonic() - self.step_started, 3),
                  "completion_tokens_mean": sum(lengths) / len(lengths),
                  **metrics.summarize(self.game, outcomes)}
        completions = [{"kind": "train", "step": step, "index": index, "completion": text,
                        "completion_tokens": length, "outcome": outcome.to_dict()}
                       for index, text, outcome, length in gathered]
        rundir.append_jsonl(self.run_dir / rundir.COMPLETIONS_FILE, completions)
        rundir.append_jsonl(self.run_dir / rundir.METRICS_FILE, [record])
        self.step_started = time.monotonic()
        logger.info("step %d/%d %s (%.0f s)", step, total_steps, progress_line(record), record["step_seconds"])
        return record


def _is_main_process() -> bool:
    # accelerate launch, torchrun and the DeepSpeed launcher set RANK; a plain run has none.
    return int(os.environ.get("RANK", "0")) == 0


def _gather_from_processes(items: list) -> list:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    from accelerate.utils import gather_object

    return gather_object(items)


def progress_line(record: dict[str, Any]) -> str:
    """Format the headline metrics of a record on one short line."""
    def value(key: str) -> float | None:
        entry = record.get(key)
        return entry.get("value") if isinstance(entry, dict) else None

    parts = []
    for key, label in (("reward", "reward"), ("expected_reward", "expected"),
                       ("intended_task_performance", "ITP"), ("exploit_ratio", "ER")):
        if value(key) is not None:
            parts.append(f"{label} {value(key):.2f}")
    if record.get("n_unscored"):
        parts.append(f"unscored {record['n_unscored']}")
    return " ".join(parts)


def train(config: TrainConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train a policy with GRPO in a game and write a run directory.

    Returns the last step's metric record. Raises ValueError (or a subclass)
    for invalid settings, data or models before any training starts.
    """
    if config.max_completion_tokens is None:
        config.max_completion_tokens = game_class(config.game).default_max_completion_tokens
    config.validate()
    run_dir = Path(run_dir)

    config.options = options_for_model(config.game, config.options, config.model)
    game = make_game(config.game, config.variant, config.options)
    preflight = getattr(game, "preflight", None)
    if callable(preflight):
        preflight()

    from loopholes.models import load_tokenizer, resolve_model_path

    model_path = resolve_model_path(config.model)
    tokenizer = load_tokenizer(model_path)
    samples = load_samples(game, config.data, config.split, limit=config.limit)
    samples, length_report = fit_prompt_length(
        samples, lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]),
        config.max_prompt_tokens, config.prompt_length_policy, truncate_text=_truncator(tokenizer))

    run_config = {"training": dataclasses.asdict(config), "game": game.describe(), "model_path": model_path,
                  "train_prompts": len(samples), "prompt_length": dataclasses.asdict(length_report),
                  "versions": versions()}
    if _is_main_process():
        checkpoint = rundir.prepare(run_dir, run_config, resume)
    else:
        # Only the main process writes the run directory; the others resume from the same checkpoint.
        checkpoint = rundir.latest_checkpoint(run_dir) if resume else None

    trainer, recorder = _build_trainer(config, game, samples, model_path, tokenizer, run_dir)
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trainer.save_model(str(run_dir / "final"))  # every process: FSDP and ZeRO-3 gather the shards here
    if not _is_main_process():
        _close_process_group()
        return {"finished": True, "steps": config.steps, "main_process": False}
    tokenizer.save_pretrained(str(run_dir / "final"))

    records = [r for r in rundir.read_jsonl(run_dir / rundir.METRICS_FILE) if r.get("kind") == "train"]
    summary = {"finished": True, "steps": config.steps, "train_seconds_this_session": round(time.monotonic() - started, 1),
               "last_step": records[-1] if records else None}
    rundir.write_json_atomic(run_dir / "summary.json", summary)
    _close_process_group()
    return summary


def _close_process_group() -> None:
    # Under accelerate launch, a process that exits with its process group still open can
    # abort in the collective backend's threads ("terminate called without an active exception").
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _truncator(tokenizer):
    def truncate(text: str, max_tokens: int) -> str:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
        return tokenizer.decode(ids)

    return truncate


def _build_trainer(config: TrainConfig, game: Game, samples: list[Sample], model_path: str, tokenizer,
                   run_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from loopholes.integrations.trl import reward_function, to_hf_dataset
    from loopholes.models import cpu_supports_bf16

    use_cuda = torch.cuda.is_available() if config.device == "auto" else config.device == "cuda"
    if config.dtype == "auto":
        bf16 = (torch.cuda.is_bf16_supported() if use_cuda else cpu_supports_bf16())
    else:
        bf16 = config.dtype == "bfloat16"

    recorder = StepRecorder(game, run_dir, tokenizer)
    reward = reward_function(game, dataset_samples=samples, seed=config.seed, on_outcomes=recorder.add)

    class RecordSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            recorder.flush(state.global_step, state.max_steps)

    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    batch = config.prompts_per_step * config.group_size
    grpo_args = dict(
        output_dir=str(run_dir / "checkpoints"),
        max_steps=config.steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=config.group_size,
        max_completion_length=config.max_completion_tokens,
        learning_rate=config.learning_rate,
        temperature=config.temperature,
        top_p=config.top_p,
        epsilon=config.clip_epsilon,
        beta=config.beta,
        loss_type=config.loss_type,
        scale_rewards=config.scale_rewards,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=not use_cuda,
        bf16=bf16,
        activation_checkpointing=False,
        logging_steps=1,
        save_steps=config.save_every,
        save_total_limit=2,
        report_to=["tensorboard"],
        dataloader_num_workers=0,
        log_completions=False,
    )
    grpo_args.update(config.grpo_overrides)
    args = GRPOConfig(**grpo_args)

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=to_hf_dataset(samples),
                          processing_class=tokenizer, peft_config=peft_config, callbacks=[RecordSteps()])
    return trainer, recorder
