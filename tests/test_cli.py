"""The command line: scoring end to end and every bad-input path (exit status 2, no partial output)."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from loopholes.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(arg) for arg in args])


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_score_builtin_self_grading(tmp_path):
    completions = write_lines(tmp_path / "in.jsonl", [
        {"index": 0, "completion": "\\boxed{0}\nSelf-assessment: CORRECT", "audited": True},
        {"index": 1, "completion": "no self report at all"},
    ])
    output = tmp_path / "out.jsonl"
    result = invoke("score", "self-grading", "--data", "builtin", "--completions", completions, "--output", output)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["n"] == 2
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert lines[0]["audited"] is True
    assert lines[0]["outcome"]["audited"] is True
    assert lines[1]["outcome"]["format_ok"] is False
    assert lines[1]["outcome"]["reward"] == -1.0


def test_score_reference_parquet(tmp_path, seed_dir):
    completions = write_lines(tmp_path / "in.jsonl", [
        {"index": 1, "completion": "\\boxed{13486}\nSelf-assessment: CORRECT", "audited": False}])
    output = tmp_path / "out.jsonl"
    result = invoke("score", "self-grading", "--data", seed_dir / "self_grading" / "test.parquet",
                    "--completions", completions, "--output", output)
    assert result.exit_code == 0, result.output
    outcome = json.loads(output.read_text())["outcome"]
    assert outcome["itp"] == 1.0
    assert outcome["reward"] == 1.0


@pytest.mark.parametrize("arguments, message", [
    (["score", "tamper"], "unknown game 'tamper'"),
    (["score", "self-grading", "--variant", "safe"], "unknown variant 'safe'"),
    (["score", "self-grading", "--option", "audit_rate=0.2"], "unknown option 'audit_rate'"),
    (["score", "self-grading", "--option", "audit_probability=high"], "invalid value 'high'"),
    (["score", "self-grading", "--option", "audit_probability"], "KEY=VALUE"),
    (["score", "self-grading", "--data", "/nonexistent/data.parquet"], "not found"),
])
def test_score_bad_arguments(tmp_path, arguments, message):
    completions = write_lines(tmp_path / "in.jsonl", [{"index": 0, "completion": "x"}])
    output = tmp_path / "out.jsonl"
    result = invoke(*arguments, "--completions", completions, "--output", output)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not output.exists()
    assert list(tmp_path.iterdir()) == [completions]


@pytest.mark.parametrize("lines, message", [
    (["{not json"], "line 1"),
    ([{"completion": "x"}], "lacks ['index']"),
    ([{"index": 0, "completion": "x"}, {"index": 10**6, "completion": "x"}], "line 2"),
    ([{"index": "0", "completion": "x"}], "index must be an integer"),
    ([{"index": 0, "completion": 5}], "completion must be a string"),
    ([{"index": 0, "completion": "x", "judge_output": "HARMFUL"}], "does not accept 'judge_output'"),
    ([], "has no completions"),
])
def test_score_bad_completions(tmp_path, lines, message):
    completions = write_lines(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    result = invoke("score", "self-grading", "--completions", completions, "--output", output)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not output.exists()


def test_score_missing_completions_file(tmp_path):
    result = invoke("score", "self-grading", "--completions", tmp_path / "absent.jsonl", "--output", tmp_path / "o")
    assert result.exit_code == 2
    assert "completions file not found" in result.output


def test_score_unreadable_and_incomplete_parquet(tmp_path):
    completions = write_lines(tmp_path / "in.jsonl", [{"index": 0, "completion": "x"}])
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet")
    result = invoke("score", "self-grading", "--data", garbage, "--completions", completions,
                    "--output", tmp_path / "o.jsonl")
    assert result.exit_code == 2
    assert "cannot read parquet" in result.output

    lacking = tmp_path / "lacking.parquet"
    pq.write_table(pa.table({"question": ["1+1?"]}), lacking)
    result = invoke("score", "self-grading", "--data", lacking, "--completions", completions,
                    "--output", tmp_path / "o.jsonl")
    assert result.exit_code == 2
    assert "lacks the columns" in result.output
    assert not (tmp_path / "o.jsonl").exists()


def test_eval_missing_model_path(tmp_path):
    result = invoke("eval", "self-grading", "--model", tmp_path / "no-such-model", "--limit", "1")
    assert result.exit_code == 2
    assert "model path not found" in result.output


def test_train_refuses_existing_folder(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("keep me")
    result = invoke("train", "self-grading", "--output", tmp_path / "run", "--steps", "1")
    assert result.exit_code == 2
    assert "not a run directory" in result.output
    assert (tmp_path / "run" / "notes.txt").read_text() == "keep me"


def test_report_rejects_non_run_folder(tmp_path):
    result = invoke("report", tmp_path)
    assert result.exit_code == 2
    assert "not a run directory" in result.output


def test_games_lists_options():
    result = invoke("games")
    assert result.exit_code == 0
    assert "self-grading" in result.output
    assert "audit_probability" in result.output


def test_score_output_folder_rejected_before_work(tmp_path):
    completions = write_lines(tmp_path / "in.jsonl", [{"index": 0, "completion": "x"}])
    result = invoke("score", "self-grading", "--completions", completions, "--output", tmp_path)
    assert result.exit_code == 2
    assert "is a folder" in result.output


@pytest.mark.parametrize("line, message", [
    ({"index": 0, "completion": "x", "audited": "yes"}, "audited must be a bool"),
])
def test_score_override_types_checked(tmp_path, line, message):
    completions = write_lines(tmp_path / "in.jsonl", [line])
    result = invoke("score", "self-grading", "--completions", completions, "--output", tmp_path / "o.jsonl")
    assert result.exit_code == 2
    assert message in result.output


def test_score_prints_parseable_json(tmp_path):
    completions = write_lines(tmp_path / "in.jsonl", [{"index": 0, "completion": "\\boxed{1}\nSelf-assessment: CORRECT"}])
    result = invoke("score", "summary", "--option", "tokenizer=whitespace", "--completions", completions,
                    "--output", tmp_path / "o.jsonl")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == 1


def test_report_rejects_run_without_steps(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    result = invoke("report", tmp_path / "run")
    assert result.exit_code == 2
    assert "no training steps" in result.output


def test_eval_one_slash_path_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = invoke("eval", "self-grading", "--model", "runs/no-such-run", "--limit", "1")
    assert result.exit_code == 2
    assert "model path not found: 'runs/no-such-run'" in result.output
