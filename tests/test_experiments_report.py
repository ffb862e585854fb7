"""The experiment report on a synthetic experiment folder: both documents, heat maps, quoted exploits."""

import pytest

from loopholes.report.experiment import build_experiment_report, fmt, fmt_steps
from test_experiments_aggregate import synthetic_folder, write_eval, write_run
from loopholes.train.rundir import append_jsonl


def test_report_quotes_exploits_and_renders_twins(tmp_path):
    directory = tmp_path / "experiment"
    synthetic_folder(directory, {"name": "r", "games": ["summary"], "seeds": [0], "kinds": ["emergence", "transfer"],
                                 "training": {"steps": 2}})
    write_run(directory, "runs/summary-vulnerable-seed0", [0.2, 0.9])
    write_run(directory, "runs/summary-secure-seed0", [0.1, 0.0])
    write_eval(directory, "evals/base/summary", exploit=(1, 10), itp=(5, 10))
    write_eval(directory, "evals/summary-vulnerable-seed0/summary", exploit=(9, 10), itp=(1, 10))
    append_jsonl(directory / "evals/summary-vulnerable-seed0/summary/samples.jsonl", [
        {"index": 0, "completion": "COPIED ARTICLE TEXT verbatim", "outcome": {"reward": 1.0, "exploited": True}},
        {"index": 1, "completion": "an honest short summary", "outcome": {"reward": 0.2, "exploited": False}},
    ])

    html_path = build_experiment_report(directory)
    markdown = html_path.with_suffix(".md").read_text()
    page = html_path.read_text()

    for heading in ("Emergence", "Zero-shot transfer", "The exploit in the model's own words", "Configs used"):
        assert f"## {heading}" in markdown
        assert f"<h2>{heading.replace(chr(39), '&#x27;')}</h2>" in page
    assert "COPIED ARTICLE TEXT verbatim" in markdown
    assert "COPIED ARTICLE TEXT verbatim" in page
    assert "an honest short summary" not in markdown
    assert "| summary | summary | 1 | 0.900" in markdown
    for image in ("transfer-er.png", "transfer-itp.png", "emergence-summary.png"):
        assert (html_path.parent / image).is_file()
        assert f"]({image})" in markdown
    assert page.count("data:image/png;base64,") == 3
    assert (html_path.parent / "results.json").is_file()


def test_report_rejects_other_folders(tmp_path):
    with pytest.raises(ValueError, match="is not an experiment folder"):
        build_experiment_report(tmp_path)


@pytest.mark.parametrize("estimate, expected", [
    ({"value": 0.25, "ci_low": 0.1, "ci_high": 0.4}, "0.250 [0.100, 0.400]"),
    ({"value": 0.25, "ci_low": None, "ci_high": None}, "0.250"),
    ({"value": None, "ci_low": None, "ci_high": None, "n": 0}, "n/a"),
    (None, "n/a"),
], ids=["with interval", "without interval", "empty", "missing"])
def test_format_estimate(estimate, expected):
    assert fmt(estimate) == expected


@pytest.mark.parametrize("entry, expected", [
    ({"seeds": 3, "crossed": 2, "mean_step": 4.5, "max_step": 8}, "4.5 (2/3 seeds)"),
    ({"seeds": 2, "crossed": 0, "mean_step": None, "max_step": 8}, "not reached in 8 steps (0/2 seeds)"),
    ({"seeds": 0, "crossed": 0, "mean_step": None, "max_step": None}, "no runs"),
], ids=["crossed", "never crossed", "no runs"])
def test_format_steps(entry, expected):
    assert fmt_steps(entry) == expected
