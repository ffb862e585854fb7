"""GRPO training end to end on a tiny model, and resuming a killed run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loopholes.train import rundir
from loopholes.train.grpo import TrainConfig, train


def tiny_config(model_dir: Path, **changes) -> TrainConfig:
    settings = dict(game="self-grading", model=str(model_dir), steps=2, prompts_per_step=2, group_size=4,
                    max_completion_tokens=16, limit=16, save_every=1, dtype="float32")
    settings.update(changes)
    return TrainConfig(**settings)


def train_records(run_dir: Path) -> list[dict]:
    return [r for r in rundir.read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "train"]


def test_two_grpo_steps_write_run_dir(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    summary = train(tiny_config(tiny_model_dir), run_dir)

    records = train_records(run_dir)
    assert [r["step"] for r in records] == [1, 2]
    first = records[0]
    for key in ("reward", "intended_task_performance", "exploit_ratio", "expected_reward",
                "p_claims_correct_given_wrong", "underclaim_rate", "format_error_rate", "audited_count"):
        assert key in first, key
    assert first["n"] == 8
    assert first["step_seconds"] > 0
    assert first["completion_tokens_mean"] > 0
    completions = rundir.read_jsonl(run_dir / "completions.jsonl")
    assert len(completions) == 16
    assert {"index", "completion", "outcome", "step"} <= set(completions[0])
    assert (run_dir / "final" / "config.json").is_file()
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    stored = json.loads((run_dir / "config.json").read_text())
    assert stored["training"]["game"] == "self-grading"
    assert stored["game"]["options"]["audit_probability"] == 0.1
    assert summary["finished"] is True


def test_existing_run_dir_is_refused(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_config(tiny_model_dir, steps=1), run_dir)
    with pytest.raises(rundir.RunDirError, match="--resume"):
        train(tiny_config(tiny_model_dir, steps=1), run_dir)


def test_killed_run_resumes_without_duplicates(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, %r)\n"
        "from test_train import tiny_config\n"
        "from loopholes.train.grpo import train\n"
        "train(tiny_config(Path(%r), steps=6), Path(%r))\n"
    ) % (str(Path(__file__).parent), str(tiny_model_dir), str(run_dir))
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if rundir.latest_checkpoint(run_dir) is not None and rundir.checkpoint_step(
                    rundir.latest_checkpoint(run_dir)) >= 2:
                break
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    killed_at = rundir.checkpoint_step(rundir.latest_checkpoint(run_dir))
    assert 2 <= killed_at < 6, "the run must be killed midway"

    train(tiny_config(tiny_model_dir, steps=6), run_dir, resume=True)

    steps = [r["step"] for r in train_records(run_dir)]
    assert steps == [1, 2, 3, 4, 5, 6]
    completion_steps = [r["step"] for r in rundir.read_jsonl(run_dir / "completions.jsonl")]
    assert completion_steps == sorted(completion_steps)
    assert len(completion_steps) == 6 * 8


def test_invalid_settings_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="group_size"):
        train(TrainConfig(group_size=1), tmp_path / "run")
    with pytest.raises(ValueError, match="unknown variant"):
        train(TrainConfig(variant="safe"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_lora_step_saves_adapter(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_config(tiny_model_dir, steps=1, lora=True, lora_rank=4), run_dir)
    assert (run_dir / "final" / "adapter_config.json").is_file()
    assert [r["step"] for r in train_records(run_dir)] == [1]


def test_eval_of_run_dir_writes_summary(tiny_model_dir, tmp_path):
    from loopholes.evaluate import EvalConfig, evaluate

    run_dir = tmp_path / "run"
    train(tiny_config(tiny_model_dir, steps=1), run_dir)
    summary = evaluate(EvalConfig(model=str(run_dir), limit=4, samples_per_item=2, max_completion_tokens=8,
                                  dtype="float32"), run_dir / "eval" / "final")
    assert summary["n"] == 8
    assert summary["eval"]["items"] == 4
    lines = rundir.read_jsonl(run_dir / "eval" / "final" / "samples.jsonl")
    assert len(lines) == 8
    assert {line["outcome"]["audit_probability"] for line in lines} == {0.1}


@pytest.mark.slow
def test_one_step_on_embedded_model(tmp_path):
    run_dir = tmp_path / "run"
    train(TrainConfig(steps=1, prompts_per_step=2, group_size=4, max_completion_tokens=48, limit=8), run_dir)
    record = train_records(run_dir)[0]
    assert record["n"] == 8
    assert record["completion_tokens_mean"] > 1
    assert (run_dir / "final" / "model.safetensors").is_file()
