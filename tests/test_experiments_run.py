"""Each experiment kind end to end on a tiny model, skipping finished parts, resuming after a kill."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from loopholes.experiments import ConfigError, parse_config, run_experiment
from loopholes.experiments.cli import experiment_app
from loopholes.experiments.runner import Runner, read_manifest
from loopholes.report.experiment import build_experiment_report
from loopholes.train import rundir

SMALL_SELF_GRADING = {"options": {"builtin_size": 20}}


def tiny_raw(model_dir: Path, **changes) -> dict:
    raw = {"name": "tiny", "model": str(model_dir), "seeds": [0], "games": {"summary": {}},
           "training": {"steps": 1, "limit": 4, "prompts_per_step": 1, "group_size": 2, "max_completion_tokens": 4,
                        "save_every": 50, "dtype": "float32"},
           "evaluation": {"items": 2, "max_completion_tokens": 4, "dtype": "float32"},
           "distillation": {"prompts": 2, "samples_per_prompt": 2, "filter": "reward_above",
                            "reward_threshold": -100, "max_completion_tokens": 4,
                            "sft": {"max_steps": 1, "batch_size": 2, "dtype": "float32"}}}
    raw.update(changes)
    return raw


def statuses(directory: Path) -> dict[str, str]:
    return {key: entry["status"] for key, entry in read_manifest(directory).items()}


def test_emergence_runs_skips_and_reports(tiny_model_dir, tmp_path):
    directory = tmp_path / "experiment"
    results = run_experiment(parse_config(tiny_raw(tiny_model_dir, kinds=["emergence"])), directory)

    assert set(statuses(directory).values()) == {"finished"}
    assert sorted(statuses(directory)) == ["evals/base/summary", "evals/summary-secure-seed0/summary",
                                           "evals/summary-vulnerable-seed0/summary", "runs/summary-secure-seed0",
                                           "runs/summary-vulnerable-seed0"]
    section = results["emergence"]["games"]["summary"]
    assert section["seeds_found"] == {"vulnerable": 1, "secure": 1}
    assert section["curves"]["vulnerable"]["exploit_ratio"]["steps"] == [1]
    assert section["final"]["vulnerable"]["er"]["n"] == 2
    assert json.loads((directory / "results.json").read_text())["kinds"] == ["emergence"]

    # A second run finds every part finished and does no work.
    metrics_before = (directory / "runs/summary-vulnerable-seed0/metrics.jsonl").read_text()
    seconds_before = {key: entry["seconds"] for key, entry in read_manifest(directory).items()}
    run_experiment(parse_config(tiny_raw(tiny_model_dir, kinds=["emergence"])), directory)
    assert (directory / "runs/summary-vulnerable-seed0/metrics.jsonl").read_text() == metrics_before
    assert {key: entry["seconds"] for key, entry in read_manifest(directory).items()} == seconds_before

    html = build_experiment_report(directory)
    markdown = html.with_suffix(".md").read_text()
    assert "## Emergence" in markdown
    assert "emergence-summary.png" in markdown
    assert (html.parent / "emergence-summary.png").is_file()
    page = html.read_text()
    assert "data:image/png;base64," in page
    assert "Configs used" in page


def test_transfer_matrix_from_checkpoints(tiny_model_dir, tmp_path):
    raw = tiny_raw(tiny_model_dir, kinds=["transfer"], games={"summary": {}, "self-grading": SMALL_SELF_GRADING},
                   checkpoints={"summary": str(tiny_model_dir), "self-grading": str(tiny_model_dir)})
    directory = tmp_path / "experiment"
    results = run_experiment(parse_config(raw), directory)

    assert all(key.startswith("evals/") for key in statuses(directory))
    assert len(statuses(directory)) == 2 + 2  # two base evaluations, then one checkpoint on both games
    cells = results["transfer"]["cells"]
    for source in ("summary", "self-grading"):
        for target in ("summary", "self-grading"):
            assert cells[source][target]["seeds_found"] == 1
            assert cells[source][target]["er"]["change"]["n"] == 4

    # Changing a setting of a finished part stops the next run before any work.
    raw["evaluation"] = {**raw["evaluation"], "items": 3}
    with pytest.raises(ConfigError, match="made with other settings.*limit: 2 -> 3"):
        Runner(parse_config(raw), directory).check()
    # Deleting the folders, as the message suggests, lets the parts be redone.
    shutil.rmtree(directory / "evals")
    Runner(parse_config(raw), directory).check()


def test_catalysis_trains_from_source_and_base(tiny_model_dir, tmp_path):
    raw = tiny_raw(tiny_model_dir, kinds=["catalysis"], games={"summary": {}, "self-grading": SMALL_SELF_GRADING},
                   catalysis={"pairs": [["self-grading", "summary"]]},
                   checkpoints={"self-grading": str(tiny_model_dir)})
    directory = tmp_path / "experiment"
    results = run_experiment(parse_config(raw), directory)

    assert sorted(key for key in statuses(directory) if key.startswith("runs/")) == [
        "runs/summary-vulnerable-from-rl-self-grading-seed0", "runs/summary-vulnerable-seed0"]
    stored = json.loads((directory / "runs/summary-vulnerable-from-rl-self-grading-seed0/config.json").read_text())
    assert stored["training"]["model"] == str(tiny_model_dir)
    pair = results["catalysis"]["pairs"][0]
    assert pair["from_source"]["curve"]["steps"] == [1]
    assert pair["from_base"]["auc"]["value"] is not None


def test_distillation_records_dataset_and_student(tiny_model_dir, tmp_path):
    raw = tiny_raw(tiny_model_dir, kinds=["distillation"], checkpoints={"summary": str(tiny_model_dir)})
    directory = tmp_path / "experiment"
    results = run_experiment(parse_config(raw), directory)

    data = directory / "distillation/summary-seed0"
    pairs = rundir.read_jsonl(data / "dataset.jsonl")
    assert len(pairs) == 4  # 2 prompts x 2 samples, all above a reward of -100
    assert pairs[0]["prompt"][-1]["role"] == "user"
    assert pairs[0]["completion"][0]["role"] == "assistant"
    assert len(rundir.read_jsonl(data / "rollouts.jsonl")) == 4
    assert (directory / "runs/sft-summary-seed0/final/config.json").is_file()
    section = results["distillation"]["games"]["summary"]
    assert section["data"][0]["kept"] == 4
    assert section["sft"][0]["steps"] == 1
    assert section["er"]["student"]["n"] == 2


def test_distillation_with_no_kept_rollouts_skips_student(tiny_model_dir, tmp_path):
    # The random tiny model never exploits, so the exploits filter keeps nothing.
    raw = tiny_raw(tiny_model_dir, kinds=["distillation"], checkpoints={"summary": str(tiny_model_dir)})
    raw["distillation"] = {**raw["distillation"], "filter": "exploits"}
    directory = tmp_path / "experiment"
    results = run_experiment(parse_config(raw), directory)

    manifest = read_manifest(directory)
    assert manifest["distillation/summary-seed0"]["status"] == "finished"
    assert manifest["runs/sft-summary-seed0"]["status"] == "skipped"
    assert "no teacher rollout passed the 'exploits' filter" in manifest["runs/sft-summary-seed0"]["reason"]
    assert manifest["evals/sft-summary-seed0/summary"]["status"] == "skipped"
    assert results["distillation"]["games"]["summary"]["data"][0]["kept"] == 0
    assert "Skipped parts" in build_experiment_report(directory).with_suffix(".md").read_text()


@pytest.mark.slow
def test_persistence_from_three_starts(tiny_model_dir, tmp_path):
    raw = tiny_raw(tiny_model_dir, kinds=["persistence"], checkpoints={"summary": str(tiny_model_dir)})
    directory = tmp_path / "experiment"
    results = run_experiment(parse_config(raw), directory)

    runs = sorted(key for key in statuses(directory) if key.startswith("runs/"))
    assert runs == ["runs/sft-summary-seed0", "runs/summary-secure-from-rl-summary-seed0",
                    "runs/summary-secure-from-sft-summary-seed0", "runs/summary-secure-seed0"]
    starts = results["persistence"]["games"]["summary"]["starts"]
    assert set(starts) == {"rl", "sft", "base"}
    for entry in starts.values():
        assert entry["seeds_found"] == 1
        assert entry["final"]["er"]["n"] == 2
    assert "## Persistence" in build_experiment_report(directory).with_suffix(".md").read_text()


@pytest.mark.slow
def test_killed_experiment_resumes(tiny_model_dir, tmp_path):
    raw = tiny_raw(tiny_model_dir, kinds=["emergence"])
    raw["training"] = {**raw["training"], "steps": 4, "save_every": 1}
    config_path = tmp_path / "experiment.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    directory = tmp_path / "experiment"
    script = ("import sys; from pathlib import Path\n"
              "from loopholes.experiments import load_config, run_experiment\n"
              "run_experiment(load_config(Path(sys.argv[1])), Path(sys.argv[2]))\n")
    process = subprocess.Popen([sys.executable, "-c", script, str(config_path), str(directory)],
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = directory / "runs/summary-vulnerable-seed0"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if rundir.checkpoint_step(rundir.latest_checkpoint(run_dir)) >= 2:
                break
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    killed_at = rundir.checkpoint_step(rundir.latest_checkpoint(run_dir))
    assert 2 <= killed_at < 4, "the experiment must be killed during its first run"
    assert statuses(directory)["runs/summary-vulnerable-seed0"] == "running"
    base_eval_seconds = read_manifest(directory)["evals/base/summary"]["seconds"]

    run_experiment(parse_config(raw), directory)

    assert set(statuses(directory).values()) == {"finished"}
    assert read_manifest(directory)["evals/base/summary"]["seconds"] == base_eval_seconds
    steps = [r["step"] for r in rundir.read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "train"]
    assert steps == [1, 2, 3, 4]


def test_cli_dry_run_and_errors(tiny_model_dir, tmp_path):
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny_raw(tiny_model_dir, kinds=["emergence"])))
    runner = CliRunner()

    listed = runner.invoke(experiment_app, ["run", str(config_path), "--output", str(tmp_path / "x"), "--dry-run"])
    assert listed.exit_code == 0, listed.output
    assert "pending   grpo    runs/summary-vulnerable-seed0" in listed.output
    assert not (tmp_path / "x").exists()

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_raw(tiny_model_dir, games=["summary", "tamper"])))
    failed = runner.invoke(experiment_app, ["run", str(bad)])
    assert failed.exit_code == 2
    assert "error: games: unknown game 'tamper'" in failed.output

    too_many = tmp_path / "too-many.yaml"
    too_many.write_text(yaml.safe_dump(tiny_raw(tiny_model_dir, kinds=["emergence"], evaluation={"items": 999})))
    failed = runner.invoke(experiment_app, ["run", str(too_many), "--output", str(tmp_path / "y")])
    assert failed.exit_code == 2
    assert "evaluation.items: 999 exceeds the 30 test items of game 'summary'" in failed.output
    assert not (tmp_path / "y").exists()

    missing = runner.invoke(experiment_app, ["report", str(tmp_path)])
    assert missing.exit_code == 2
    assert "is not an experiment folder" in missing.output
