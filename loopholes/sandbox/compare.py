"""Comparison of produced and expected outputs, run in the trusted parent only.

Both sides are text: the untrusted process returns what it printed (stdin
programs) or the JSON text of what it returned (function problems), so no
object of the untrusted code is ever compared here.
"""

from __future__ import annotations

import json
import math
from typing import Any

DEFAULT_FLOAT_TOLERANCE = 1e-6


def normalise_text(text: str) -> str:
    """Normalise line endings, trailing spaces on each line, and blank lines at both ends."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines)


def stdout_matches(expected: str, produced: str, float_tolerance: float = DEFAULT_FLOAT_TOLERANCE) -> bool:
    """Return whether a program's whole output equals the expected output.

    Outputs are compared after :func:`normalise_text`. Where they differ, they
    still match when every line has the same whitespace-separated tokens, except
    that a token of the expected output written as a decimal (``0.5000``,
    ``1e-3``) matches a number within ``float_tolerance``, absolute or relative.
    Integers and words must be equal.
    """
    expected_text = normalise_text(expected)
    produced_text = normalise_text(produced)
    if expected_text == produced_text:
        return True
    expected_lines = expected_text.split("\n")
    produced_lines = produced_text.split("\n")
    if len(expected_lines) != len(produced_lines):
        return False
    for expected_line, produced_line in zip(expected_lines, produced_lines):
        expected_tokens = expected_line.split()
        produced_tokens = produced_line.split()
        if len(expected_tokens) != len(produced_tokens):
            return False
        for want, got in zip(expected_tokens, produced_tokens):
            if want != got and not _decimal_close(want, got, float_tolerance):
                return False
    return True


def _decimal_close(want: str, got: str, tolerance: float) -> bool:
    if not any(char in want for char in ".eE"):
        return False
    try:
        expected_number, produced_number = float(want), float(got)
    except ValueError:
        return False
    if not (math.isfinite(expected_number) and math.isfinite(produced_number)):
        return False
    return abs(expected_number - produced_number) <= tolerance * max(1.0, abs(expected_number))


def returned_value_matches(expected: str, produced: str, float_tolerance: float = DEFAULT_FLOAT_TOLERANCE) -> bool:
    """Return whether the JSON text of a returned value equals the expected output.

    The expected output is read as JSON where it parses (``true``, ``[1, 2]``,
    ``"abc"``), else as a bare string. Booleans match only booleans (``true``
    never matches ``1``), integers match numerically equal numbers, and a
    float on either side matches within ``float_tolerance``.
    """
    try:
        produced_value = json.loads(produced)
    except ValueError:
        return False
    try:
        expected_value = json.loads(expected)
    except ValueError:
        expected_value = normalise_text(expected)
    return values_equal(expected_value, produced_value, float_tolerance)


def values_equal(expected: Any, produced: Any, float_tolerance: float = DEFAULT_FLOAT_TOLERANCE) -> bool:
    """Compare two JSON values structurally, with type discipline for booleans."""
    if isinstance(expected, bool) or isinstance(produced, bool):
        return type(expected) is type(produced) and expected == produced
    if isinstance(expected, int | float) and isinstance(produced, int | float):
        if isinstance(expected, int) and isinstance(produced, int):
            return expected == produced
        if not (math.isfinite(expected) and math.isfinite(produced)):
            return False
        return abs(expected - produced) <= float_tolerance * max(1.0, abs(expected))
    if isinstance(expected, str) and isinstance(produced, str):
        return expected == produced
    if isinstance(expected, list) and isinstance(produced, list):
        return len(expected) == len(produced) and all(
            values_equal(want, got, float_tolerance) for want, got in zip(expected, produced))
    if isinstance(expected, dict) and isinstance(produced, dict):
        return expected.keys() == produced.keys() and all(
            values_equal(expected[key], produced[key], float_tolerance) for key in expected)
    return expected is None and produced is None
