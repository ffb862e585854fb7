"""Run directories: one folder per training run, safe to resume.

Layout::

    RUN_DIR/
      config.json        the resolved configuration and package versions
      metrics.jsonl      one record per training step (and per evaluation)
      completions.jsonl  every sampled completion with its outcome
      checkpoints/       TRL / transformers checkpoints (checkpoint-STEP)
      final/             the trained model and tokenizer
      tensorboard/       TensorBoard event files
      eval/              evaluations of this run's models

A killed run resumes from its newest checkpoint. Records of steps after that
checkpoint were produced by work that is redone, so they are removed before
training continues: no record is lost and none is duplicated.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
COMPLETIONS_FILE = "completions.jsonl"
CONFIG_FILE = "config.json"


class RunDirError(ValueError):
    """A run directory cannot be created or resumed as asked."""


def latest_checkpoint(run_dir: Path) -> Path | None:
    """Return the checkpoint with the highest step that has its trainer state, or None."""
    checkpoints = []
    for path in (run_dir / "checkpoints").glob("checkpoint-*"):
        suffix = path.name.rsplit("-", 1)[-1]
        if suffix.isdigit() and (path / "trainer_state.json").is_file():
            checkpoints.append((int(suffix), path))
    return max(checkpoints)[1] if checkpoints else None


def checkpoint_step(checkpoint: Path | None) -> int:
    return int(checkpoint.name.rsplit("-", 1)[-1]) if checkpoint is not None else 0


def prepare(run_dir: Path, config: dict[str, Any], resume: bool) -> Path | None:
    """Create a new run directory or prepare an existing one for resuming.

    Returns the checkpoint to resume from (None for a fresh start).

    Raises:
        RunDirError: if the folder contains a run and ``resume`` is False, or the
            stored configuration differs from ``config`` in a training setting.
    """
    config_path = run_dir / CONFIG_FILE
    if config_path.is_file():
        if not resume:
            raise RunDirError(f"run directory {run_dir} already contains a run; pass --resume to continue it "
                              "or choose another --output folder")
        stored = json.loads(config_path.read_text())
        changed = sorted(key for key in config["training"]
                         if stored.get("training", {}).get(key) != config["training"][key]
                         and key not in RESUMABLE_CHANGES)
        if changed:
            raise RunDirError(f"cannot resume {run_dir}: the settings {changed} differ from the stored run")
        checkpoint = latest_checkpoint(run_dir)
        truncate_records(run_dir, checkpoint_step(checkpoint))
        logger.info("resuming %s from %s", run_dir, checkpoint.name if checkpoint else "the start")
        return checkpoint

    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirError(f"output folder {run_dir} exists and is not a run directory; choose an empty or new folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(config_path, config)
    return None


# Settings that may change between a run and its resumption.
RESUMABLE_CHANGES = {"steps", "save_every"}


def truncate_records(run_dir: Path, last_step: int) -> None:
    """Keep only the training records of steps up to ``last_step``; drop torn lines."""
    for name in (METRICS_FILE, COMPLETIONS_FILE):
        path = run_dir / name
        if not path.is_file():
            continue
        kept, dropped = [], 0
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if record.get("kind", "train") == "train" and record.get("step", 0) > last_step:
                dropped += 1
                continue
            kept.append(line)
        if dropped:
            logger.info("removed %d records after step %d from %s", dropped, last_step, path)
        temporary = path.with_suffix(".tmp")
        temporary.write_text("".join(line + "\n" for line in kept))
        os.replace(temporary, path)


def append_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Append records and flush them to disk, so a kill loses at most a torn last line."""
    with path.open("a") as handle:
        for record in records:
            handle.write(json.dumps(record, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file, skipping a torn last line."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def write_json_atomic(path: Path, data: Any) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(temporary, path)
