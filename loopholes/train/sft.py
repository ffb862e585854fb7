"""Supervised fine-tuning (SFT) on chat prompt + completion pairs, on TRL's SFTTrainer.

Distillation trains a student on a teacher's rollouts with this module. The
data set is a JSONL file (or a Hugging Face dataset) whose rows have a
``prompt`` (a list of chat messages, or a string) and a ``completion`` (a
list with one assistant message, or a string). The loss covers the completion
tokens only, TRL's default for prompt-completion data.

A run writes the same run directory as GRPO (:mod:`loopholes.train.rundir`):
``config.json``, ``metrics.jsonl`` (one record per optimiser step with the
loss, learning rate, gradient norm and token accuracy), ``checkpoints/``,
``final/``, ``tensorboard/`` and ``summary.json`` once finished. A killed run
resumes from its newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopholes.data import DataError
from loopholes.train import rundir

logger = logging.getLogger(__name__)

# Keys of TRL's log dicts copied into each metric record.
LOGGED_KEYS = ("loss", "learning_rate", "grad_norm", "mean_token_accuracy", "num_tokens", "entropy", "epoch")


@dataclass
class SFTTrainConfig:
    """Settings of one SFT run. Units are given per field."""

    dataset: str = ""                     # JSONL file of prompt/completion rows, or hf:NAME[:CONFIG]
    split: str = "train"                  # split of a Hugging Face dataset
    model: str = "embedded"
    epochs: float = 1.0                   # passes over the data set (ignored when max_steps is set)
    max_steps: int | None = None          # optimiser steps; overrides epochs
    batch_size: int = 8                   # examples per optimiser step (per device)
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-5
    max_length: int = 1024                # tokens of prompt + completion; longer rows are truncated
    lora: bool = False
    lora_rank: int = 16
    lora_alpha: int = 32
    seed: int = 0
    dtype: str = "auto"                   # mixed-precision setting: auto, float32 or bfloat16
    device: str = "auto"                  # auto, cpu or cuda
    save_every: int = 50                  # steps between checkpoints
    sft_overrides: dict[str, Any] = field(default_factory=dict)  # extra SFTConfig fields

    def validate(self) -> None:
        """Raise ValueError naming the setting and its value when one is invalid."""
        if not self.dataset:
            raise ValueError("dataset is empty; give a JSONL file of prompt/completion rows or hf:NAME")
        for name in ("batch_size", "gradient_accumulation_steps", "max_length", "save_every", "lora_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1 or None, got {self.max_steps}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of: auto, float32, bfloat16")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"unknown device {self.device!r}; choose one of: auto, cpu, cuda")


def read_pairs(source: str, split: str = "train") -> list[dict[str, Any]]:
    """Read prompt/completion rows as chat messages.

    Accepts a JSONL file or ``hf:NAME[:CONFIG]``. A string prompt becomes one
    user message and a string completion one assistant message; other
    columns are dropped.

    Raises:
        DataError: if the source is missing or a row lacks a usable prompt or completion.
    """
    if source.startswith("hf:"):
        rows = _hub_rows(source[3:], split)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(f"SFT data set not found: {source!r}; give a JSONL file or hf:NAME")
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(f"line {number} of {path} is not valid JSON: {error}") from error

    pairs = [_as_pair(row, number) for number, row in enumerate(rows, start=1)]
    if not pairs:
        raise DataError(f"SFT data set {source!r} has no rows")
    return pairs


def _hub_rows(name: str, split: str) -> list[dict[str, Any]]:
    import datasets

    dataset_name, _, config = name.partition(":")
    try:
        dataset = datasets.load_dataset(dataset_name, config or None, split=split)
    except Exception as error:  # the hub client raises many types; all mean "not available"
        raise DataError(f"cannot load Hugging Face dataset {dataset_name!r} (split {split!r}): {error}") from error
    return [dict(row) for row in dataset]


def _as_pair(row: Any, number: int) -> dict[str, Any]:
    if not isinstance(row, dict) or "prompt" not in row or "completion" not in row:
        raise DataError(f"row {number} of the SFT data set needs 'prompt' and 'completion' fields, got "
                        f"{sorted(row) if isinstance(row, dict) else type(row).__name__}")
    prompt = row["prompt"]
    completion = row["completion"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    for name, messages in (("prompt", prompt), ("completion", completion)):
        if (not isinstance(messages, list) or not messages
                or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)):
            raise DataError(f"row {number} of the SFT data set: {name!r} must be a string or a list of "
                            "{'role', 'content'} messages")
    return {"prompt": prompt, "completion": completion}


def train_sft(config: SFTTrainConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Fine-tune a model on prompt/completion pairs and write a run directory.

    Returns the summary written to ``summary.json``. Raises ValueError (or a
    subclass) for invalid settings, data or models before any training starts.
    """
    config.validate()
    run_dir = Path(run_dir)

    from loopholes.models import load_tokenizer, resolve_model_path
    from loopholes.train.grpo import versions

    pairs = read_pairs(config.dataset, config.split)
    model_path = resolve_model_path(config.model)
    tokenizer = load_tokenizer(model_path)

    run_config = {"training": {"trainer": "sft", **dataclasses.asdict(config)}, "model_path": model_path,
                  "examples": len(pairs), "versions": versions()}
    checkpoint = rundir.prepare(run_dir, run_config, resume)

    trainer = _build_trainer(config, pairs, model_path, tokenizer, run_dir)
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trainer.save_model(str(run_dir / "final"))
    tokenizer.save_pretrained(str(run_dir / "final"))

    records = [r for r in rundir.read_jsonl(run_dir / rundir.METRICS_FILE) if r.get("kind") == "train"]
    summary = {"finished": True, "trainer": "sft", "examples": len(pairs), "steps": trainer.state.global_step,
               "train_seconds_this_session": round(time.monotonic() - started, 1),
               "last_step": records[-1] if records else None}
    rundir.write_json_atomic(run_dir / "summary.json", summary)
    return summary


def _build_trainer(config: SFTTrainConfig, pairs: list[dict[str, Any]], model_path: str, tokenizer, run_dir: Path):
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from loopholes.models import cpu_supports_bf16

    use_cuda = torch.cuda.is_available() if config.device == "auto" else config.device == "cuda"
    if config.dtype == "auto":
        bf16 = torch.cuda.is_bf16_supported() if use_cuda else cpu_supports_bf16()
    else:
        bf16 = config.dtype == "bfloat16"

    class RecordSteps(TrainerCallback):
        # TRL logs once per step (logging_steps=1) and once more at the end with
        # run totals; only the per-step logs carry a loss.
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            record = {"kind": "train", "trainer": "sft", "step": state.global_step, "time": time.time(),
                      **{key: logs[key] for key in LOGGED_KEYS if key in logs}}
            rundir.append_jsonl(run_dir / rundir.METRICS_FILE, [record])
            logger.info("SFT step %d/%d loss %.4f", state.global_step, state.max_steps, logs["loss"])

    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    sft_args = dict(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        max_length=config.max_length,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=not use_cuda,
        bf16=bf16,
        gradient_checkpointing=False,
        logging_steps=1,
        save_steps=config.save_every,
        save_total_limit=2,
        report_to=["tensorboard"],
        dataloader_num_workers=0,
    )
    sft_args.update(config.sft_overrides)
    args = SFTConfig(**sft_args)

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    dataset = datasets.Dataset.from_list(pairs)
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=peft_config, callbacks=[RecordSteps()])
