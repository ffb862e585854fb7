"""Statistics over seeds: curve bands, differences against a base model, thresholds, AUC, blind spot.

Inputs are estimate dicts as written by :func:`loopholes.metrics.summarize`
(``value``, ``ci_low``, ``ci_high``, ``n``, ``count``, ``method``), one per
seed. Outputs are estimate dicts of the same shape.

Intervals over seeds come from a two-level percentile bootstrap
(``method: "seed-bootstrap"``, :data:`RESAMPLES` resamples, fixed generator
seed). Each resample draws the seeds with replacement. It then redraws each
chosen seed's estimate from its own sampling distribution and averages: the
Jeffreys posterior Beta(k + 1/2, n - k + 1/2) for a proportion of k in n, or
a normal with the standard error implied by the 95% interval otherwise. The interval therefore widens
both when seeds disagree and when each seed's evaluation is small. With one
seed there is nothing to resample across, and the seed's own interval is
kept: Wilson for a proportion, Newcombe's hybrid score interval for a
difference of two proportions, a normal interval otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from loopholes import metrics

RESAMPLES = 2000
GENERATOR_SEED = 0
Z_95 = metrics.Z_95

Estimate = dict[str, Any]


def missing(n: int = 0, method: str = "") -> Estimate:
    return {"value": None, "ci_low": None, "ci_high": None, "n": n, "count": None, "method": method}


def has_value(estimate: Any) -> bool:
    return isinstance(estimate, dict) and estimate.get("value") is not None


def _is_proportion(estimate: Estimate) -> bool:
    return (estimate.get("method") == "wilson" and estimate.get("count") is not None
            and estimate.get("n", 0) > 0)


def _standard_error(estimate: Estimate) -> float:
    low, high = estimate.get("ci_low"), estimate.get("ci_high")
    if low is None or high is None:
        return 0.0
    return max(0.0, (high - low) / (2 * Z_95))


def draw(estimate: Estimate, generator: np.random.Generator, size: int = RESAMPLES) -> np.ndarray:
    """Draw ``size`` values from an estimate's sampling distribution."""
    if _is_proportion(estimate):
        # Jeffreys posterior Beta(k + 1/2, n - k + 1/2): unlike a binomial redraw
        # it does not collapse to a point at 0 or n successes.
        successes, n = float(estimate["count"]), float(estimate["n"])
        return generator.beta(successes + 0.5, n - successes + 0.5, size)
    return generator.normal(float(estimate["value"]), _standard_error(estimate), size)


def _percentile_interval(draws: np.ndarray) -> tuple[float, float]:
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def seed_draws(per_seed: Sequence[np.ndarray], generator: np.random.Generator) -> np.ndarray:
    """Combine per-seed draws into draws of the mean over seeds, resampling the seeds.

    ``per_seed[s][b]`` is the b-th within-seed draw of seed s; the result's
    b-th value averages the b-th draws of a resample of the seeds.
    """
    stacked = np.stack(per_seed)                       # seeds x resamples
    seeds, resamples = stacked.shape
    chosen = generator.integers(0, seeds, size=(resamples, seeds))
    return stacked[chosen, np.arange(resamples)[:, None]].mean(axis=1)


def mean_over_seeds(estimates: Sequence[Estimate | None]) -> Estimate:
    """Estimate the mean of a metric over seeds, with its seed-bootstrap interval.

    Seeds whose estimate has no value (an empty set) are left out; ``n`` is
    the number of seeds used.
    """
    usable = [estimate for estimate in estimates if has_value(estimate)]
    if not usable:
        return missing(0, "seed-bootstrap")
    if len(usable) == 1:
        return {**usable[0], "n_seeds": 1}
    generator = np.random.default_rng(GENERATOR_SEED)
    draws = seed_draws([draw(estimate, generator) for estimate in usable], generator)
    low, high = _percentile_interval(draws)
    value = float(np.mean([estimate["value"] for estimate in usable]))
    return {"value": value, "ci_low": min(low, value), "ci_high": max(high, value), "n": len(usable),
            "count": None, "method": "seed-bootstrap", "n_seeds": len(usable)}


def difference_over_seeds(trained: Sequence[Estimate | None],
                          reference: Estimate | Sequence[Estimate | None] | None) -> Estimate:
    """Estimate the mean over seeds of a metric minus a reference: one estimate, or another group of seeds.

    A single reference (the base model, evaluated once) has one set of draws
    shared by all seeds of a resample. A group of reference seeds is
    resampled on its own. With one seed on each side the interval is
    Newcombe's for two proportions, or a normal interval otherwise.
    """
    group = [reference] if reference is None or isinstance(reference, dict) else list(reference)
    usable = [estimate for estimate in trained if has_value(estimate)]
    usable_reference = [estimate for estimate in group if has_value(estimate)]
    if not usable or not usable_reference:
        return missing(0, "seed-bootstrap")
    if len(usable) == 1 and len(usable_reference) == 1:
        return {**difference_of_two(usable[0], usable_reference[0]), "n_seeds": 1}
    generator = np.random.default_rng(GENERATOR_SEED)
    draws = (seed_draws([draw(estimate, generator) for estimate in usable], generator)
             - seed_draws([draw(estimate, generator) for estimate in usable_reference], generator))
    low, high = _percentile_interval(draws)
    value = float(np.mean([e["value"] for e in usable]) - np.mean([e["value"] for e in usable_reference]))
    return {"value": value, "ci_low": min(low, value), "ci_high": max(high, value), "n": len(usable),
            "count": None, "method": "seed-bootstrap", "n_seeds": len(usable)}


def difference_of_two(a: Estimate, b: Estimate) -> Estimate:
    """Estimate a - b for two independent estimates.

    Two proportions get Newcombe's hybrid score interval (the same formula as
    :func:`loopholes.metrics.difference`, from the two Wilson intervals);
    anything else gets a normal interval from the standard errors implied by
    the two 95% intervals.
    """
    if not has_value(a) or not has_value(b):
        return missing(a.get("n", 0) + b.get("n", 0) if a and b else 0)
    delta = a["value"] - b["value"]
    n = a["n"] + b["n"]
    if _is_proportion(a) and _is_proportion(b):
        low = delta - math.sqrt((a["value"] - a["ci_low"]) ** 2 + (b["ci_high"] - b["value"]) ** 2)
        high = delta + math.sqrt((a["ci_high"] - a["value"]) ** 2 + (b["value"] - b["ci_low"]) ** 2)
        return {"value": delta, "ci_low": max(-1.0, low), "ci_high": min(1.0, high), "n": n, "count": None,
                "method": "newcombe"}
    half_width = Z_95 * math.hypot(_standard_error(a), _standard_error(b))
    return {"value": delta, "ci_low": delta - half_width, "ci_high": delta + half_width, "n": n, "count": None,
            "method": "normal"}


# -- curves -------------------------------------------------------------------------


def curve(records: Sequence[dict[str, Any]], key: str) -> dict[int, Estimate]:
    """Return ``{step: estimate}`` of a metric from a run's training records."""
    points = {}
    for record in records:
        entry = record.get(key)
        if record.get("kind", "train") == "train" and has_value(entry):
            points[int(record["step"])] = entry
    return points


def curve_over_seeds(curves: Sequence[dict[int, Estimate]]) -> dict[str, list]:
    """Average per-step curves over seeds, with a seed-bootstrap band at each step.

    A step enters where at least one seed has it; ``n_seeds`` gives the count per step.
    """
    steps = sorted({step for points in curves for step in points})
    band: dict[str, list] = {"steps": [], "value": [], "ci_low": [], "ci_high": [], "n_seeds": []}
    for step in steps:
        estimate = mean_over_seeds([points.get(step) for points in curves])
        if estimate["value"] is None:
            continue
        band["steps"].append(step)
        band["value"].append(estimate["value"])
        band["ci_low"].append(estimate["ci_low"])
        band["ci_high"].append(estimate["ci_high"])
        band["n_seeds"].append(estimate.get("n_seeds", 1))
    return band


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average; the first ``window - 1`` points average what exists so far."""
    smoothed = []
    for index in range(len(values)):
        chunk = values[max(0, index - window + 1):index + 1]
        smoothed.append(sum(chunk) / len(chunk))
    return smoothed


def first_step_crossing(steps: Sequence[int], values: Sequence[float], threshold: float, direction: str = "above",
                        window: int = 1) -> int | None:
    """Return the first step whose (smoothed) value crosses the threshold, or None.

    ``above`` means value >= threshold (emergence); ``below`` means
    value < threshold (the exploit removed, in persistence).
    """
    if direction not in ("above", "below"):
        raise ValueError(f"direction must be 'above' or 'below', got {direction!r}")
    for step, value in zip(steps, smooth(list(values), window)):
        if (value >= threshold) if direction == "above" else (value < threshold):
            return int(step)
    return None


def area_under_curve(steps: Sequence[int], values: Sequence[float]) -> float | None:
    """Return the trapezoidal area under a curve divided by its step span (the curve's mean height).

    Normalising by the span keeps the value on the metric's scale, so runs of
    different lengths compare; one point returns its value.
    """
    if not steps:
        return None
    if len(steps) == 1:
        return float(values[0])
    area = sum((steps[i + 1] - steps[i]) * (values[i] + values[i + 1]) / 2 for i in range(len(steps) - 1))
    return area / (steps[-1] - steps[0])


def auc_estimate(points: dict[int, Estimate], generator: np.random.Generator | None = None) -> tuple[float | None, np.ndarray | None]:
    """Return a run's ER AUC and draws of it from the per-step sampling distributions."""
    steps = sorted(points)
    if not steps:
        return None, None
    generator = generator or np.random.default_rng(GENERATOR_SEED)
    value = area_under_curve(steps, [points[step]["value"] for step in steps])
    step_draws = np.stack([draw(points[step], generator) for step in steps], axis=1)  # resamples x steps
    if len(steps) == 1:
        return value, step_draws[:, 0]
    widths = np.diff(np.array(steps, dtype=float))
    areas = ((step_draws[:, 1:] + step_draws[:, :-1]) / 2 * widths).sum(axis=1)
    return value, areas / (steps[-1] - steps[0])


def auc_over_seeds(curves: Sequence[dict[int, Estimate]]) -> Estimate:
    """Estimate the mean AUC over seeds, with a two-level bootstrap interval (one seed: within-run only)."""
    generator = np.random.default_rng(GENERATOR_SEED)
    values, draws = [], []
    for points in curves:
        value, run_draws = auc_estimate(points, generator)
        if value is not None:
            values.append(value)
            draws.append(run_draws)
    if not values:
        return missing(0, "seed-bootstrap")
    combined = seed_draws(draws, generator) if len(draws) > 1 else draws[0]
    low, high = _percentile_interval(combined)
    value = float(np.mean(values))
    return {"value": value, "ci_low": min(low, value), "ci_high": max(high, value), "n": len(values),
            "count": None, "method": "seed-bootstrap" if len(values) > 1 else "parametric-bootstrap",
            "n_seeds": len(values)}


def auc_difference(curves_a: Sequence[dict[int, Estimate]], curves_b: Sequence[dict[int, Estimate]]) -> Estimate:
    """Estimate mean AUC of curves_a minus mean AUC of curves_b (seeds resampled within each group)."""
    generator = np.random.default_rng(GENERATOR_SEED)
    groups = []
    for curves in (curves_a, curves_b):
        values, draws = [], []
        for points in curves:
            value, run_draws = auc_estimate(points, generator)
            if value is not None:
                values.append(value)
                draws.append(run_draws)
        if not values:
            return missing(0, "seed-bootstrap")
        groups.append((float(np.mean(values)), seed_draws(draws, generator) if len(draws) > 1 else draws[0]))
    value = groups[0][0] - groups[1][0]
    low, high = _percentile_interval(groups[0][1] - groups[1][1])
    return {"value": value, "ci_low": min(low, value), "ci_high": max(high, value),
            "n": min(len(curves_a), len(curves_b)), "count": None, "method": "seed-bootstrap"}


def steps_to_threshold(curves: Sequence[dict[int, Estimate]], threshold: float, direction: str = "above",
                       window: int = 1) -> dict[str, Any]:
    """Return the first crossing step per seed, how many seeds crossed, and the mean of those steps."""
    per_seed = []
    for points in curves:
        steps = sorted(points)
        per_seed.append(first_step_crossing(steps, [points[s]["value"] for s in steps], threshold, direction, window))
    crossed = [step for step in per_seed if step is not None]
    return {"threshold": threshold, "direction": direction, "window": window, "per_seed": per_seed,
            "crossed": len(crossed), "seeds": len(per_seed),
            "mean_step": sum(crossed) / len(crossed) if crossed else None,
            "max_step": max((max(points) for points in curves if points), default=None)}


# -- blind spot ---------------------------------------------------------------------


def change(steps: Sequence[int], values: Sequence[float]) -> float | None:
    """Return the mean of the last quarter of a curve minus the mean of its first quarter (at least one point each)."""
    if len(values) < 2:
        return None
    width = max(1, len(values) // 4)
    return sum(values[-width:]) / width - sum(values[:width]) / width


def blind_spot(reward: dict[int, Estimate], itp: dict[int, Estimate], exploit: dict[int, Estimate],
               min_er_rise: float, min_itp_rise: float) -> dict[str, Any]:
    """Flag a run where reward and ITP rise together while ER rises.

    The flag is set when ER rises by at least ``min_er_rise``, reward rises
    (change above 0), and ITP rises by more than ``min_itp_rise``. Changes are
    last-quarter mean minus first-quarter mean over the run's steps.
    """
    changes = {}
    for name, points in (("reward", reward), ("intended_task_performance", itp), ("exploit", exploit)):
        steps = sorted(points)
        changes[name] = change(steps, [points[step]["value"] for step in steps])
    if any(value is None for value in changes.values()):
        return {"flag": None, "changes": changes}
    flag = (changes["exploit"] >= min_er_rise and changes["reward"] > 0
            and changes["intended_task_performance"] > min_itp_rise)
    return {"flag": flag, "changes": changes}
