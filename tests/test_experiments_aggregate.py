"""Aggregation over seeds, and the analyses on synthetic experiment folders with known results."""

import json
from pathlib import Path

import pytest

from loopholes import metrics
from loopholes.experiments import aggregate, analyze, parse_config
from loopholes.experiments.plan import build_plan
from loopholes.train.rundir import append_jsonl, write_json_atomic


def proportion(successes: int, n: int) -> dict:
    return metrics.proportion([True] * successes + [False] * (n - successes)).to_dict()


def points(values: list[float], n: int = 1000) -> dict[int, dict]:
    """A curve of proportions over steps 1..len(values), each from n completions."""
    return {step: proportion(round(value * n), n) for step, value in enumerate(values, start=1)}


# -- steps to threshold, AUC, blind spot, as tables -------------------------------

CROSSINGS = [
    # steps, values, threshold, direction, window, expected step
    ([1, 2, 3, 4], [0.1, 0.4, 0.6, 0.9], 0.5, "above", 1, 3),
    ([1, 2, 3, 4], [0.1, 0.5, 0.2, 0.9], 0.5, "above", 1, 2),   # reaching the threshold counts
    ([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4], 0.5, "above", 1, None),
    ([1, 2, 3, 4], [0.1, 0.9, 0.1, 0.9], 0.5, "above", 2, 2),   # (0.1 + 0.9) / 2 = 0.5
    ([1, 2, 3, 4], [0.0, 0.9, 0.0, 0.8], 0.6, "above", 2, None),
    ([2, 4, 6], [0.9, 0.5, 0.05], 0.1, "below", 1, 6),
    ([2, 4, 6], [0.9, 0.1, 0.05], 0.1, "below", 1, 6),          # below is strict
    ([2, 4, 6], [0.9, 0.8, 0.7], 0.1, "below", 1, None),
]


@pytest.mark.parametrize("steps, values, threshold, direction, window, expected", CROSSINGS)
def test_first_step_crossing(steps, values, threshold, direction, window, expected):
    assert aggregate.first_step_crossing(steps, values, threshold, direction, window) == expected


AREAS = [
    ([1, 2, 3], [0.0, 0.5, 1.0], 0.5),
    ([1, 3], [0.2, 0.2], 0.2),
    ([1, 2, 4], [0.0, 1.0, 1.0], (0.5 + 2.0) / 3),
    ([5], [0.7], 0.7),
    ([], [], None),
]


@pytest.mark.parametrize("steps, values, expected", AREAS)
def test_area_under_curve(steps, values, expected):
    result = aggregate.area_under_curve(steps, values)
    assert result == pytest.approx(expected) if expected is not None else result is None


BLIND_SPOTS = [
    # reward, ITP, ER (eight steps each), expected flag
    ([0, 0, 1, 1, 2, 2, 3, 3], [.1, .1, .2, .2, .3, .3, .4, .4], [0, 0, .2, .2, .4, .4, .6, .6], True),
    ([0, 0, 1, 1, 2, 2, 3, 3], [.4, .4, .3, .3, .2, .2, .1, .1], [0, 0, .2, .2, .4, .4, .6, .6], False),  # ITP falls
    ([0, 0, 1, 1, 2, 2, 3, 3], [.1, .1, .2, .2, .3, .3, .4, .4], [.1, .1, .1, .1, .1, .1, .15, .15], False),  # ER flat
    ([3, 3, 2, 2, 1, 1, 0, 0], [.1, .1, .2, .2, .3, .3, .4, .4], [0, 0, .2, .2, .4, .4, .6, .6], False),  # reward falls
    ([0, 0, 1, 1, 2, 2, 3, 3], [.2] * 8, [0, 0, .2, .2, .4, .4, .6, .6], False),  # ITP flat: not a rise
]


@pytest.mark.parametrize("reward, itp, exploit, expected", BLIND_SPOTS,
                         ids=["all rise", "itp falls", "er flat", "reward falls", "itp flat"])
def test_blind_spot_flag(reward, itp, exploit, expected):
    def as_curve(values):
        return {step: {"value": value} for step, value in enumerate(values, start=1)}

    result = aggregate.blind_spot(as_curve(reward), as_curve(itp), as_curve(exploit), min_er_rise=0.1, min_itp_rise=0.0)
    assert result["flag"] is expected
    # Quarters of eight steps are two steps: last two minus first two.
    assert result["changes"]["exploit"] == pytest.approx((exploit[-1] + exploit[-2]) / 2 - (exploit[0] + exploit[1]) / 2)


def test_blind_spot_needs_two_steps():
    one = {1: {"value": 0.5}}
    assert aggregate.blind_spot(one, one, one, 0.1, 0.0)["flag"] is None


# -- intervals over seeds --------------------------------------------------------


def test_one_seed_keeps_its_own_interval():
    estimate = proportion(3, 10)
    result = aggregate.mean_over_seeds([estimate])
    assert result["value"] == estimate["value"]
    assert (result["ci_low"], result["ci_high"]) == (estimate["ci_low"], estimate["ci_high"])
    assert result["method"] == "wilson"


def test_one_seed_difference_is_newcombe():
    trained = [True] * 7 + [False] * 3
    base = [True] * 2 + [False] * 8
    expected = metrics.difference(trained, base)
    result = aggregate.difference_over_seeds([metrics.proportion(trained).to_dict()], metrics.proportion(base).to_dict())
    assert result["method"] == "newcombe"
    assert result["value"] == pytest.approx(expected.value)
    assert result["ci_low"] == pytest.approx(expected.ci_low)
    assert result["ci_high"] == pytest.approx(expected.ci_high)


def test_two_precise_seeds_span_their_values():
    # With huge evaluations the within-seed noise vanishes. Resampling two seeds
    # gives means a, (a+b)/2, b with chances 1/4, 1/2, 1/4, so the 95% interval is [a, b].
    result = aggregate.mean_over_seeds([proportion(200_000, 1_000_000), proportion(600_000, 1_000_000)])
    assert result["value"] == pytest.approx(0.4)
    assert result["ci_low"] == pytest.approx(0.2, abs=0.002)
    assert result["ci_high"] == pytest.approx(0.6, abs=0.002)
    assert result["n"] == 2
    assert result["method"] == "seed-bootstrap"


def test_agreeing_small_seeds_keep_sampling_noise():
    # Three seeds with the same 5/20 still have an interval as wide as the pooled 15/60 roughly.
    result = aggregate.mean_over_seeds([proportion(5, 20)] * 3)
    pooled = proportion(15, 60)
    assert result["value"] == pytest.approx(0.25)
    assert result["ci_low"] < 0.2
    assert result["ci_high"] > 0.3
    assert result["ci_high"] - result["ci_low"] == pytest.approx(pooled["ci_high"] - pooled["ci_low"], rel=0.3)


def test_seeds_without_value_are_left_out():
    empty = metrics.proportion([]).to_dict()
    result = aggregate.mean_over_seeds([empty, proportion(2, 4)])
    assert result["value"] == 0.5
    assert aggregate.mean_over_seeds([empty, None])["value"] is None


def test_difference_over_seeds_shares_base():
    trained = [proportion(300_000, 1_000_000), proportion(500_000, 1_000_000)]
    result = aggregate.difference_over_seeds(trained, proportion(100_000, 1_000_000))
    assert result["value"] == pytest.approx(0.3)
    assert result["ci_low"] == pytest.approx(0.2, abs=0.003)
    assert result["ci_high"] == pytest.approx(0.4, abs=0.003)


def test_curve_over_seeds_averages_per_step():
    band = aggregate.curve_over_seeds([points([0.1, 0.3]), points([0.3, 0.5, 0.7])])
    assert band["steps"] == [1, 2, 3]
    assert band["value"] == pytest.approx([0.2, 0.4, 0.7])
    assert band["n_seeds"] == [2, 2, 1]
    for low, value, high in zip(band["ci_low"], band["value"], band["ci_high"]):
        assert low <= value <= high


def test_auc_over_seeds():
    result = aggregate.auc_over_seeds([points([0.0, 0.5, 1.0], n=1_000_000), points([0.0, 0.0, 0.0], n=1_000_000)])
    assert result["value"] == pytest.approx(0.25)
    assert result["ci_low"] == pytest.approx(0.0, abs=0.003)
    assert result["ci_high"] == pytest.approx(0.5, abs=0.003)


def test_steps_to_threshold_per_seed():
    result = aggregate.steps_to_threshold([points([0.1, 0.6]), points([0.7, 0.9]), points([0.1, 0.2])], 0.5)
    assert result["per_seed"] == [2, 1, None]
    assert result["crossed"] == 2
    assert result["mean_step"] == 1.5


# -- analyses on synthetic experiment folders ------------------------------------


def synthetic_folder(directory: Path, raw: dict) -> tuple:
    config = parse_config(raw)
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / "config.json", config.to_dict())
    write_json_atomic(directory / "parts.json", {"parts": {}})
    return config, build_plan(config)


def write_eval(directory: Path, key: str, exploit: tuple[int, int], itp: tuple[int, int]) -> None:
    folder = directory / key
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "summary.json", {"exploit_ratio": proportion(*exploit),
                                                "intended_task_performance": proportion(*itp)})


def write_run(directory: Path, key: str, exploit: list[float], itp: list[float] | None = None,
              reward: list[float] | None = None, n: int = 100) -> None:
    folder = directory / key
    folder.mkdir(parents=True, exist_ok=True)
    itp = itp or [0.5] * len(exploit)
    reward = reward or [0.0] * len(exploit)
    records = [{"kind": "train", "step": step, "exploit_ratio": proportion(round(er * n), n),
                "intended_task_performance": proportion(round(task * n), n),
                "reward": {"value": value, "ci_low": value - 0.1, "ci_high": value + 0.1, "n": n, "count": None,
                           "method": "normal"}}
               for step, (er, task, value) in enumerate(zip(exploit, itp, reward), start=1)]
    append_jsonl(folder / "metrics.jsonl", records)


def test_transfer_matrix_known_answers(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    directory = tmp_path / "experiment"
    synthetic_folder(directory, {"name": "t", "games": ["self-grading", "summary"], "seeds": [0],
                                 "kinds": ["transfer"], "checkpoints": {"self-grading": str(checkpoint),
                                                                       "summary": str(checkpoint)}})
    label = "checkpoint-" + str(checkpoint).strip("/").replace("/", "_")[-60:]
    write_eval(directory, "evals/base/self-grading", exploit=(2, 20), itp=(10, 20))
    write_eval(directory, "evals/base/summary", exploit=(0, 20), itp=(4, 20))
    write_eval(directory, f"evals/{label}/self-grading", exploit=(12, 20), itp=(8, 20))
    write_eval(directory, f"evals/{label}/summary", exploit=(5, 20), itp=(4, 20))

    cells = analyze(directory)["transfer"]["cells"]
    cell = cells["self-grading"]["self-grading"]
    expected = metrics.difference([True] * 12 + [False] * 8, [True] * 2 + [False] * 18)
    assert cell["er"]["change"]["value"] == pytest.approx(0.5)
    assert cell["er"]["change"]["ci_low"] == pytest.approx(expected.ci_low)
    assert cell["er"]["change"]["ci_high"] == pytest.approx(expected.ci_high)
    assert cell["itp"]["change"]["value"] == pytest.approx(-0.1)
    assert cells["self-grading"]["summary"]["er"]["change"]["value"] == pytest.approx(0.25)
    assert cells["self-grading"]["summary"]["itp"]["change"]["value"] == pytest.approx(0.0)
    assert cells["summary"]["self-grading"]["seeds_found"] == 1


def test_transfer_matrix_over_seeds(tmp_path):
    directory = tmp_path / "experiment"
    synthetic_folder(directory, {"name": "t", "games": ["summary"], "seeds": [0, 1], "kinds": ["transfer"],
                                 "training": {"steps": 3}})
    n = 1_000_000
    write_eval(directory, "evals/base/summary", exploit=(100_000, n), itp=(0, n))
    write_eval(directory, "evals/summary-vulnerable-seed0/summary", exploit=(300_000, n), itp=(0, n))
    write_eval(directory, "evals/summary-vulnerable-seed1/summary", exploit=(500_000, n), itp=(0, n))

    change = analyze(directory)["transfer"]["cells"]["summary"]["summary"]["er"]["change"]
    assert change["value"] == pytest.approx(0.3)
    assert change["method"] == "seed-bootstrap"
    assert change["ci_low"] == pytest.approx(0.2, abs=0.003)
    assert change["ci_high"] == pytest.approx(0.4, abs=0.003)


def test_emergence_known_answers(tmp_path):
    directory = tmp_path / "experiment"
    synthetic_folder(directory, {"name": "e", "games": ["summary"], "seeds": [0, 1], "kinds": ["emergence"],
                                 "training": {"steps": 4}, "thresholds": {"emergence": 0.5}})
    write_run(directory, "runs/summary-vulnerable-seed0", [0.1, 0.3, 0.6, 0.8], itp=[.1, .2, .3, .4],
              reward=[0, 1, 2, 3])
    write_run(directory, "runs/summary-vulnerable-seed1", [0.1, 0.2, 0.3, 0.7], itp=[.4, .3, .2, .1],
              reward=[0, 1, 2, 3])
    write_run(directory, "runs/summary-secure-seed0", [0.1, 0.1, 0.0, 0.0])
    write_run(directory, "runs/summary-secure-seed1", [0.0, 0.1, 0.1, 0.0])

    section = analyze(directory)["emergence"]["games"]["summary"]
    assert section["first_step_above"]["vulnerable"]["per_seed"] == [3, 4]
    assert section["first_step_above"]["vulnerable"]["mean_step"] == 3.5
    assert section["first_step_above"]["secure"]["crossed"] == 0
    assert section["curves"]["vulnerable"]["exploit_ratio"]["value"] == pytest.approx([0.1, 0.25, 0.45, 0.75])
    assert section["blind_spot"]["per_seed"] == [True, False]
    # Seed-mean ITP is flat (0.25 each step), so the mean curves show no blind spot.
    assert section["blind_spot"]["flag"] is False
    assert section["seeds_found"] == {"vulnerable": 2, "secure": 2}
    assert section["final"]["vulnerable"]["er"]["value"] is None  # no evaluations written


def test_catalysis_and_persistence_known_answers(tmp_path):
    directory = tmp_path / "experiment"
    synthetic_folder(directory, {"name": "c", "games": ["self-grading", "summary"], "seeds": [0],
                                 "kinds": ["catalysis", "persistence"], "training": {"steps": 3},
                                 "catalysis": {"pairs": [["self-grading", "summary"]]},
                                 "persistence": {"starts": ["rl", "base"]},
                                 "thresholds": {"emergence": 0.5, "persistence": 0.2}})
    write_run(directory, "runs/summary-vulnerable-from-rl-self-grading-seed0", [0.4, 0.6, 1.0], n=1_000_000)
    write_run(directory, "runs/summary-vulnerable-seed0", [0.0, 0.2, 0.6], n=1_000_000)
    write_run(directory, "runs/summary-secure-from-rl-summary-seed0", [0.9, 0.5, 0.1])
    write_run(directory, "runs/summary-secure-seed0", [0.1, 0.0, 0.0])

    results = analyze(directory)
    pair = results["catalysis"]["pairs"][0]
    assert pair["from_source"]["steps_to_threshold"]["per_seed"] == [2]
    assert pair["from_base"]["steps_to_threshold"]["per_seed"] == [3]
    assert pair["steps_saved"] == 1
    assert pair["from_source"]["auc"]["value"] == pytest.approx((0.5 + 0.8) / 2)
    assert pair["from_base"]["auc"]["value"] == pytest.approx((0.1 + 0.4) / 2)
    assert pair["auc_difference"]["value"] == pytest.approx(0.4)
    assert pair["auc_difference"]["ci_low"] == pytest.approx(0.4, abs=0.003)

    starts = results["persistence"]["games"]["summary"]["starts"]
    assert starts["rl"]["steps_below"]["per_seed"] == [3]
    assert starts["base"]["steps_below"]["per_seed"] == [1]
    assert starts["rl"]["start_er"]["value"] == pytest.approx(0.9)
    assert starts["rl"]["end_er"]["value"] == pytest.approx(0.1)
    assert results["persistence"]["games"]["self-grading"]["starts"]["rl"]["seeds_found"] == 0


def test_compliance_uses_gap_as_exploit_key(tmp_path):
    directory = tmp_path / "experiment"
    synthetic_folder(directory, {"name": "g", "games": ["compliance"], "seeds": [0], "kinds": ["transfer"],
                                 "training": {"steps": 2}})
    gap = metrics.difference([True] * 9 + [False], [True] * 3 + [False] * 7).to_dict()
    base_gap = metrics.difference([True] * 5 + [False] * 5, [True] * 5 + [False] * 5).to_dict()
    for key, value in (("evals/base/compliance", base_gap), ("evals/compliance-vulnerable-seed0/compliance", gap)):
        (directory / key).mkdir(parents=True)
        (directory / key / "summary.json").write_text(json.dumps({"compliance_gap": value}))
    results = analyze(directory)
    assert results["exploit_keys"] == {"compliance": "compliance_gap"}
    change = results["transfer"]["cells"]["compliance"]["compliance"]["er"]["change"]
    assert change["value"] == pytest.approx(0.6)
    assert change["method"] == "normal"
    assert change["ci_low"] < 0.6 < change["ci_high"]
