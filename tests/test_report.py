"""Reports from run directories: plots, tables and the verdict per run."""

import json
from pathlib import Path

from loopholes.report import build_report
from loopholes.train.rundir import append_jsonl, write_json_atomic


def estimate(value: float, n: int = 16) -> dict:
    return {"value": value, "ci_low": max(0.0, value - 0.1), "ci_high": min(1.0, value + 0.1), "n": n,
            "count": None, "method": "wilson"}


def make_run(folder: Path, variant: str, exploit: list[float], claims: list[float]) -> Path:
    folder.mkdir(parents=True)
    write_json_atomic(folder / "config.json", {
        "training": {"game": "self-grading", "variant": variant, "seed": 0, "model": "embedded",
                     "prompts_per_step": 2, "group_size": 8, "learning_rate": 1e-5},
        "game": {"options": {"audit_probability": 0.1}}})
    records = [{"kind": "train", "step": step, "reward": estimate(0.5), "expected_reward": estimate(0.3),
                "intended_task_performance": estimate(0.3), "exploit_ratio": estimate(er),
                "p_claims_correct": estimate(claim)}
               for step, (er, claim) in enumerate(zip(exploit, claims), start=1)]
    append_jsonl(folder / "metrics.jsonl", records)
    (folder / "eval" / "final").mkdir(parents=True)
    write_json_atomic(folder / "eval" / "final" / "summary.json", {
        "intended_task_performance": estimate(0.25, 48), "exploit_ratio": estimate(exploit[-1], 48),
        "reward": estimate(0.1, 48), "n_unscored": 0, "eval": {"items": 48, "samples_per_item": 1}})
    return folder


def test_report_overlays_runs_and_states_verdicts(tmp_path):
    vulnerable = make_run(tmp_path / "vulnerable", "vulnerable", [0.2, 0.3, 0.3, 0.6, 0.8, 0.9],
                          [0.5, 0.6, 0.7, 0.9, 0.95, 1.0])
    secure = make_run(tmp_path / "secure", "secure", [0.3, 0.2, 0.1, 0.0, 0.0, 0.0],
                      [0.5, 0.3, 0.1, 0.05, 0.05, 0.05])

    path = build_report([vulnerable, secure], tmp_path / "report")

    text = path.read_text()
    assert (tmp_path / "report" / "headline.png").stat().st_size > 10_000
    assert (tmp_path / "report" / "extra_rates.png").is_file()
    assert "| vulnerable (seed 0) | 6 |" in text
    assert "exploit emerged" in text
    assert "settled on claiming INCORRECT" in text
    assert "| vulnerable (seed 0) | final | 48 x 1 |" in text


def test_verdict_uses_step_windows(tmp_path):
    from loopholes.report import Run, verdict

    # One noisy high step at the end is not an emerged exploit.
    spike = Run(make_run(tmp_path / "spike", "vulnerable", [0.2, 0.3, 0.2, 0.3, 0.2, 0.9], [0.5] * 6))
    assert verdict(spike) == "exploit rising"
    flat = Run(make_run(tmp_path / "flat", "vulnerable", [0.3] * 6, [0.5] * 6))
    assert verdict(flat) == "no exploit"


def test_verdict_prefers_evaluations(tmp_path):
    from loopholes.report import Run, verdict
    from loopholes.train.rundir import write_json_atomic

    folder = make_run(tmp_path / "run", "vulnerable", [0.3] * 6, [0.5] * 6)
    counted = {"base": (27, 64), "final": (43, 64)}
    for name, (count, n) in counted.items():
        (folder / "eval" / name).mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "eval" / name / "summary.json", {
            "exploit_ratio": {"value": count / n, "ci_low": 0, "ci_high": 1, "n": n, "count": count},
            "p_claims_correct": {"value": 0.9, "ci_low": 0, "ci_high": 1, "n": n, "count": 58}})
    text = verdict(Run(folder))
    # 43/64 - 27/64 = 0.25; Newcombe's interval excludes 0 at these counts.
    assert text.startswith("exploit emerged")
    assert "0.42 -> 0.67" in text


def test_report_default_folder_is_inside_first_run(tmp_path):
    run = make_run(tmp_path / "run", "vulnerable", [0.4, 0.4], [0.5, 0.5])
    path = build_report([run])
    assert path == run / "report" / "report.md"
    assert "no exploit" in path.read_text()
    assert json.loads((run / "config.json").read_text())["training"]["variant"] == "vulnerable"
