"""SFT on prompt/completion pairs: data checks and a short run that writes a run directory."""

import json

import pytest

from loopholes.data import DataError
from loopholes.train import rundir
from loopholes.train.sft import SFTTrainConfig, read_pairs, train_sft

CHAT_ROW = {"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}]}

BAD_ROWS = [
    ({"prompt": "2+2?"}, "row 1 of the SFT data set needs 'prompt' and 'completion'"),
    ({"prompt": [], "completion": "4"}, "row 1 of the SFT data set: 'prompt' must be a string or a list"),
    ({"prompt": "2+2?", "completion": [{"content": "4"}]}, "'completion' must be a string or a list"),
    ([1, 2], "needs 'prompt' and 'completion' fields, got list"),
]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("row, message", BAD_ROWS, ids=["no completion", "empty prompt", "message without role",
                                                        "not a mapping"])
def test_bad_rows_rejected(tmp_path, row, message):
    with pytest.raises(DataError, match=message):
        read_pairs(str(write_rows(tmp_path / "data.jsonl", [row])))


def test_string_fields_become_messages(tmp_path):
    pairs = read_pairs(str(write_rows(tmp_path / "data.jsonl", [{"prompt": "2+2?", "completion": "4", "extra": 1}])))
    assert pairs == [{"prompt": [{"role": "user", "content": "2+2?"}],
                      "completion": [{"role": "assistant", "content": "4"}]}]


def test_missing_and_invalid_files_rejected(tmp_path):
    with pytest.raises(DataError, match="SFT data set not found"):
        read_pairs(str(tmp_path / "absent.jsonl"))
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="line 1 of .* is not valid JSON"):
        read_pairs(str(tmp_path / "broken.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="has no rows"):
        read_pairs(str(tmp_path / "empty.jsonl"))


@pytest.mark.parametrize("changes, message", [
    ({"dataset": ""}, "dataset is empty"),
    ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
    ({"max_steps": 0}, "max_steps must be at least 1 or None, got 0"),
    ({"learning_rate": 0.0}, "learning_rate must be positive"),
    ({"dtype": "float8"}, "unknown dtype 'float8'"),
], ids=["no dataset", "zero batch", "zero steps", "zero learning rate", "bad dtype"])
def test_invalid_settings_rejected(changes, message):
    with pytest.raises(ValueError, match=message):
        SFTTrainConfig(**{"dataset": "data.jsonl", **changes}).validate()


def test_two_sft_steps_write_run_dir(tiny_model_dir, tmp_path):
    data = write_rows(tmp_path / "data.jsonl", [CHAT_ROW] * 4)
    run_dir = tmp_path / "run"
    summary = train_sft(SFTTrainConfig(dataset=str(data), model=str(tiny_model_dir), max_steps=2, batch_size=2,
                                       save_every=1, dtype="float32"), run_dir)

    records = [r for r in rundir.read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "train"]
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["trainer"] == "sft" and r["loss"] > 0 for r in records)
    assert (run_dir / "final" / "config.json").is_file()
    stored = json.loads((run_dir / "config.json").read_text())
    assert stored["training"]["trainer"] == "sft"
    assert stored["examples"] == 4
    assert summary["finished"] is True
    assert summary["steps"] == 2
    with pytest.raises(rundir.RunDirError, match="--resume"):
        train_sft(SFTTrainConfig(dataset=str(data), model=str(tiny_model_dir), max_steps=2, dtype="float32"), run_dir)
