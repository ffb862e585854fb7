"""Data sources and the prompt-length policy: nothing is dropped silently."""

import logging

import pytest

from loopholes.data import DataError, fit_prompt_length, load_samples
from loopholes.games import make_game


def word_count(text: str) -> int:
    return len(text.split())


def keep_words(text: str, limit: int) -> str:
    return " ".join(text.split()[:limit])


@pytest.fixture
def samples():
    game = make_game("self-grading")
    return load_samples(game, "builtin", "test", limit=20)


def test_keep_policy_reports_long_prompts(samples, caplog):
    limit = sorted(word_count(s.prompt_text) for s in samples)[10]
    with caplog.at_level(logging.WARNING):
        kept, report = fit_prompt_length(samples, word_count, limit, "keep")
    assert len(kept) == 20
    assert report.too_long == sum(word_count(s.prompt_text) > limit for s in samples)
    assert report.too_long > 0
    assert report.removed == 0
    assert "exceed" in caplog.text


def test_filter_policy_counts_removed(samples):
    limit = sorted(word_count(s.prompt_text) for s in samples)[10]
    kept, report = fit_prompt_length(samples, word_count, limit, "filter")
    assert report.removed == report.too_long > 0
    assert len(kept) == 20 - report.removed
    assert all(word_count(s.prompt_text) <= limit for s in kept)


def test_truncate_policy_fits_every_prompt(samples):
    limit = min(word_count(s.prompt_text) for s in samples) - 3
    kept, report = fit_prompt_length(samples, word_count, limit, "truncate", truncate_text=keep_words)
    assert len(kept) == 20
    assert report.truncated == 20
    assert all(word_count(s.prompt_text) <= limit for s in kept)


def test_error_policy_names_the_row(samples):
    with pytest.raises(DataError, match="row"):
        fit_prompt_length(samples, word_count, 1, "error")


def test_unknown_policy_rejected(samples):
    with pytest.raises(ValueError, match="unknown prompt length policy"):
        fit_prompt_length(samples, word_count, 10, "drop")


def test_missing_folder_split(tmp_path):
    with pytest.raises(DataError, match="no train.parquet"):
        load_samples(make_game("self-grading"), str(tmp_path), "train")


def test_reference_parquet_rows(seed_dir):
    samples = load_samples(make_game("self-grading"), str(seed_dir / "self_grading"), "test")
    assert len(samples) == 100
    assert samples[1].index == 1
    assert samples[1].messages[-1]["role"] == "user"
