"""Set-level metrics: intervals against known values, unscored samples excluded."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loopholes import metrics
from loopholes.games.base import Outcome


# Wilson 95% intervals computed by hand from the closed form (z = 1.959964).
@pytest.mark.parametrize("successes, n, low, high", [
    (0, 10, 0.0, 0.277533),
    (5, 10, 0.236590, 0.763410),
    (10, 10, 0.722467, 1.0),
    (81, 263, 0.255289, 0.366210),
])
def test_wilson_interval_known_values(successes, n, low, high):
    got_low, got_high = metrics.wilson_interval(successes, n)
    assert got_low == pytest.approx(low, abs=1e-5)
    assert got_high == pytest.approx(high, abs=1e-5)


def test_newcombe_difference_known_values():
    # Newcombe (1998), Table II example (f): 56/70 - 48/80, interval [0.0524, 0.3339].
    estimate = metrics.difference([True] * 56 + [False] * 14, [True] * 48 + [False] * 32)
    assert estimate.value == pytest.approx(0.2)
    assert estimate.ci_low == pytest.approx(0.0524, abs=5e-4)
    assert estimate.ci_high == pytest.approx(0.3339, abs=5e-4)


def test_proportion_excludes_unscored():
    estimate = metrics.proportion([True, None, False, None, True])
    assert estimate.n == 3
    assert estimate.count == 2
    assert estimate.value == pytest.approx(2 / 3)


def test_empty_set_has_no_value():
    estimate = metrics.proportion([None, None])
    assert estimate.n == 0
    assert estimate.value is None
    assert estimate.format() == "n/a (n=0)"


def test_mean_of_fractions_uses_bootstrap():
    estimate = metrics.mean([0.5, 0.25, 1.0, 0.0, 0.75, None])
    assert estimate.method == "bootstrap"
    assert estimate.n == 5
    assert estimate.value == pytest.approx(0.5)
    assert 0.0 <= estimate.ci_low < 0.5 < estimate.ci_high <= 1.0


def test_mean_of_flags_uses_wilson():
    assert metrics.mean([1.0, 0.0, 1.0]).method == "wilson"


@given(st.lists(st.booleans(), min_size=1, max_size=200))
def test_wilson_contains_estimate(flags):
    estimate = metrics.proportion(flags)
    assert 0.0 <= estimate.ci_low <= estimate.value <= estimate.ci_high <= 1.0


def test_outcome_rejects_nan_reward():
    with pytest.raises(ValueError, match="finite"):
        Outcome(reward=math.nan, itp=0.0, exploited=False)


def test_unscored_outcome_clears_flags():
    outcome = Outcome.unscored("judge timed out")
    assert outcome.itp is None
    assert outcome.exploited is None
    assert outcome.reward == 0.0
    assert outcome.details["unscored_reason"] == "judge timed out"
