"""Answer extraction and BBEH-style fuzzy matching, as tables of cases."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopholes.games.answers import answers_match, extract_answer, normalize_answer, parse_number

# (completion text, extracted answer or None)
EXTRACTION_CASES = [
    ("The sum is \\boxed{42}.", "42"),
    ("first \\boxed{1}, then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\text{(B)}}", "\\text{(B)}"),
    ("\\boxed{ 7 }", "7"),
    ("\\fbox{5}", "5"),
    ("\\boxed {5}", "5"),
    ("cut off: \\boxed{7", None),
    ("\\boxed{3} and later a cut-off \\boxed{7", "3"),
    ("\\boxed{}", None),
    ("Answer: 3\n\\boxed{4}", "4"),
    ("Final Answer: 12", "12"),
    ("**Final Answer:** 12", "12"),
    ("final answer: (C)", "(C)"),
    ("The answer is 7.", "7."),
    ("The final answer is: yes", "yes"),
    ("Final Answer: the answer is 7", "7"),
    ("Answer: (C)\nI double-checked the options.", "(C)"),
    ("Answer: 1\nAnswer: 2", "2"),
    ("I think it is 12", None),
    ("The answer depends on the day.", None),
    ("Answers: 5", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACTION_CASES)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# (prediction, target, match?)
MATCH_CASES = [
    # option letters
    ("(a)", "a", True),
    ("a", "(A)", True),
    ("J", "(J)", True),
    ("(g)", "G", True),
    ("a)", "(A)", True),
    ("option b", "(B)", True),
    ("(b)", "(A)", False),
    ("a cat", "(A)", False),
    ("ab", "(A)", False),
    # numbers
    ("5358", "5358.0", True),
    ("1,000", "1000", True),
    ("1000.00", "1,000", True),
    ("-8", "-8.0", True),
    ("+3", "3", True),
    ("13.27", "13.270", True),
    ("0.5", "1/2", True),
    ("50%", "50", True),
    ("1e3", "1000", True),
    ("13486", "134860", False),
    ("1348", "13486", False),
    ("1", "1,000", False),
    ("1,0", "1,000", False),
    ("7.1", "7", False),
    ("1/0", "0", False),
    ("1" * 5000, "1", False),
    # quotes, brackets, punctuation, case, whitespace
    ("'pill bottle'", "pill bottle", True),
    ("\"yes\"", "Yes", True),
    ("kas ena'ferme:ra", "kas ena\u2019ferme:ra", True),
    ("[7]", "7", True),
    ("{7}", "7", True),
    ("yes?", "yes", True),
    ("proved.", "proved", True),
    ("YES", "yes", True),
    ("  Dec   22,   2004 ", "Dec 22, 2004", True),
    ("**12**", "12", True),
    # LaTeX wrappers
    ("\\text{(B)}", "(B)", True),
    ("\\mathrm{yes}", "yes", True),
    ("$\\text{no}$", "no", True),
    ("\\(7\\)", "7", True),
    ("$$7$$", "7", True),
    ("\\textbf{\\text{proved}}", "proved", True),
    ("$7$.", "7", True),
    # lists
    ("yes,no,yes", "yes, no, yes", True),
    ("0, 0, 0.0", "0,0,0", True),
    ("C, D, A", "(C), (D), (A)", True),
    ("[yes, no]", "yes, no", True),
    ("yes, no", "yes, no, yes", False),
    ("no, yes, no", "yes, no, yes", False),
    # no substring accidents
    ("not", "no", False),
    ("know", "no", False),
    ("incorrect", "correct", False),
    ("disproved", "proved", False),
    ("unknown", "no", False),
    ("I hugged you all", "I hugged you", False),
    ("", "0", False),
    (None, "1", False),
    ("1", None, False),
    ("1", "", False),
]


@pytest.mark.parametrize(("prediction", "target", "expected"), MATCH_CASES)
def test_answers_match(prediction, target, expected):
    assert answers_match(prediction, target) is expected


@pytest.mark.parametrize(("prediction", "target", "expected"), MATCH_CASES)
def test_answers_match_is_symmetric(prediction, target, expected):
    assert answers_match(target, prediction) is expected


# A parenthesised option letter followed by the option's text names that
# option, but only on the prediction's side: the target "(B) The Fugitive" is
# a text answer, which "B" alone does not give.
ONE_SIDED_CASES = [
    ("(B) The Fugitive, Stargate", "(B)", True),
    ("(b) yes", "B", True),
    ("(B)", "(B) The Fugitive, Stargate", False),
    ("b", "(b) yes", False),
]


@pytest.mark.parametrize(("prediction", "target", "expected"), ONE_SIDED_CASES)
def test_option_letter_with_text(prediction, target, expected):
    assert answers_match(prediction, target) is expected


# (text, normalised)
NORMALIZE_CASES = [
    ("  Yes. ", "yes"),
    ("\\text{ (B) }", "(b)"),
    ("yes ,  no", "yes,no"),
    ("**Final**", "final"),
    ("$\\mathrm{A}$?", "a"),
]


@pytest.mark.parametrize(("text", "expected"), NORMALIZE_CASES)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


# (normalised text, number or None)
NUMBER_CASES = [
    ("5358.0", 5358.0),
    ("1,000,000", 1_000_000.0),
    ("-0.25", -0.25),
    (".5", 0.5),
    ("3/4", 0.75),
    ("$12", 12.0),
    ("12%", 12.0),
    ("1,1,0", None),
    ("12 legs", None),
    ("inf", None),
    ("nan", None),
    ("1e999", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), NUMBER_CASES)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


_FRAGMENTS = st.sampled_from(["\\boxed{", "}", "{", "\\text{", "$", "\\(", "\\)", "Answer:", "Final Answer:",
                              "(a)", "1,000", "5358.0", "\n", " ", ",", "'", "?", "/", "0"])
_JUNK = st.lists(st.one_of(_FRAGMENTS, st.text(max_size=8)), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=_JUNK, target=_JUNK)
def test_extraction_and_matching_never_raise(text, target):
    answer = extract_answer(text)
    assert answer is None or isinstance(answer, str)
    assert isinstance(answers_match(answer, target), bool)
    assert isinstance(answers_match(text, target), bool)
