"""Final-answer extraction and BBEH-style fuzzy matching of answers.

A completion states its final answer in ``\\boxed{...}`` (the last box wins,
nested braces allowed) or, failing that, on a ``Final Answer:`` / ``Answer:`` /
``The answer is`` line. :func:`answers_match` then compares the extracted text
with the target the way BIG-Bench Extra Hard's evaluation does: case and
whitespace do not matter, and neither do LaTeX wrappers, markdown, quotes,
enclosing brackets, a trailing ``.`` or ``?``, the form of an option letter
("(a)", "a", "A", "a)"), or the form of a number ("5358.0", "5358", "1,000").

Matching is always of the whole answer: "13486" never matches "134860", and
"no" never matches "not".
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

# LaTeX commands whose argument is the text itself (``\text{(B)}`` -> ``(B)``).
_WRAPPER_COMMANDS = ("boxed", "fbox", "text", "textbf", "textit", "texttt", "textrm", "textsf",
                     "mathrm", "mathbf", "mathit", "mathtt", "mathsf", "operatorname", "emph", "mbox")
_WRAPPER_PATTERN = re.compile(r"\\(?:" + "|".join(_WRAPPER_COMMANDS) + r")\s*\{")
_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_QUOTES = "'\"`\u2018\u2019\u201c\u201d"
_ENCLOSING = (("[", "]"), ("{", "}"), ("<", ">"))
_TRAILING_PUNCTUATION = ".?!;:"
# Math delimiters nest only a few levels in real answers; the cap keeps junk
# such as a long run of ``$`` linear in time.
_MAX_UNWRAP_PASSES = 8

_ANSWER_LINE = re.compile(
    r"(?:^|\W)(?:the\s+)?(?:final\s+)?answer\s*(?::|\bis\b:?)\s*(?P<answer>.+)$",
    re.IGNORECASE,
)
_OPTION = re.compile(r"^(?:option\s+)?\(?([a-z])\)?$")
_OPTION_WITH_TEXT = re.compile(r"^\(([a-z])\)\s+\S")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?$")
_SIMPLE_FRACTION = re.compile(r"^[+-]?\d+\s*/\s*\d+$")


def last_boxed(text: str) -> str | None:
    """Return the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), or None.

    Braces are matched by depth, so ``\\boxed{\\frac{1}{2}}`` gives
    ``\\frac{1}{2}``. A box whose closing brace is missing (a completion cut
    off by the length limit) does not count.
    """
    closing = _matching_braces(text)
    openings = [match.end() - 1 for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for opening in reversed(openings):
        if opening in closing:
            return text[opening + 1:closing[opening]]
    return None


def _matching_braces(text: str) -> dict[int, int]:
    """Map the index of each balanced ``{`` to the index of its ``}``, in one pass."""
    pairs, stack = {}, []
    for index, character in enumerate(text):
        if character == "{":
            stack.append(index)
        elif character == "}" and stack:
            pairs[stack.pop()] = index
    return pairs


def answer_line(text: str) -> str | None:
    """Return the text after the last ``Final Answer:``, ``Answer:`` or ``The answer is``, or None.

    Within a line the innermost label wins, so ``Final Answer: the answer is 7``
    gives ``7``.
    """
    for line in reversed(text.splitlines()):
        answer = None
        match = _ANSWER_LINE.search(line.replace("**", ""))
        while match and match.group("answer").strip():
            answer = match.group("answer").strip()
            match = _ANSWER_LINE.search(answer)
        if answer is not None:
            return answer
    return None


def extract_answer(text: str) -> str | None:
    """Return the final answer stated in a completion, or None where it states none.

    The last ``\\boxed{}`` wins; without a box, the last answer line does. A
    bare number at the end of the reasoning is not taken as an answer, because
    the prompt asks for a box and guessing would reward unformatted output.
    """
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip() or None
    return answer_line(text)


def strip_latex(text: str) -> str:
    """Remove math delimiters and text-style LaTeX wrappers, keeping their content."""
    text = text.strip()
    for _ in range(_MAX_UNWRAP_PASSES):
        before = text
        for opening, closing in _MATH_DELIMITERS:
            if len(text) >= len(opening) + len(closing) and text.startswith(opening) and text.endswith(closing):
                text = text[len(opening):len(text) - len(closing)].strip()
                break
        text = _unwrap_commands(text).strip()
        if text == before:
            break
    return text


def _unwrap_commands(text: str) -> str:
    # Drop every ``\\text{`` (and the like) together with its matching ``}``,
    # nested ones included, in one pass.
    closing = _matching_braces(text)
    spans = []
    for match in _WRAPPER_PATTERN.finditer(text):
        opening = match.end() - 1
        if opening in closing:
            spans.append((match.start(), match.end()))
            spans.append((closing[opening], closing[opening] + 1))
    if not spans:
        return text
    pieces, position = [], 0
    for start, end in sorted(spans):
        pieces.append(text[position:start])
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


def normalize_answer(text: str) -> str:
    """Normalise an answer for comparison.

    Lower-cases, strips LaTeX wrappers and markdown emphasis, collapses
    whitespace, writes list separators as a bare comma, and drops trailing
    ``.``, ``?``, ``!``, ``;`` or ``:``.
    """
    # Punctuation goes first as well as last, so that ``$7$.`` loses its ``$``.
    text = strip_latex(text.strip().rstrip(_TRAILING_PUNCTUATION))
    text = text.replace("**", "").replace("__", "").replace("\\,", "").replace("\\!", "")
    text = text.replace("\\%", "%").replace("\\$", "$")
    text = " ".join(text.split()).lower()
    text = re.sub(r"\s*,\s*", ",", text)
    text = text.rstrip(_TRAILING_PUNCTUATION).strip()
    return text


def answers_match(prediction: str | None, target: str | None) -> bool:
    """Return whether a predicted answer matches the target answer.

    Args:
        prediction: The extracted answer; None (no answer) never matches.
        target: The reference answer; None or an empty target never matches.

    Both sides are first normalised by :func:`normalize_answer`. They match
    if they are equal, also after removing quotes or one enclosing pair of
    brackets. They also match if they name the same option letter, are equal
    numbers, or are comma-separated lists whose items match one by one.
    """
    if prediction is None or target is None:
        return False
    predicted = normalize_answer(str(prediction))
    expected = normalize_answer(str(target))
    if not predicted or not expected:
        return False
    if _scalars_match(predicted, expected):
        return True
    return _lists_match(predicted, expected)


def _scalars_match(predicted: str, expected: str) -> bool:
    if predicted == expected:
        return True

    predicted, expected = _unquote(predicted), _unquote(expected)
    if predicted == expected:
        return True

    predicted, expected = _unenclose(predicted), _unenclose(expected)
    if predicted == expected:
        return True

    expected_option = _option_letter(expected)
    if expected_option is not None and _option_letter(predicted, allow_text=True) == expected_option:
        return True

    predicted_number, expected_number = parse_number(predicted), parse_number(expected)
    if predicted_number is not None and expected_number is not None:
        return math.isclose(predicted_number, expected_number, rel_tol=1e-9, abs_tol=1e-12)
    return False


def _lists_match(predicted: str, expected: str) -> bool:
    # "1,000" is a number, so it is never read as the list [1, 0].
    if parse_number(predicted) is not None or parse_number(expected) is not None:
        return False
    predicted_items = _unenclose(_unquote(predicted)).split(",")
    expected_items = _unenclose(_unquote(expected)).split(",")
    if len(expected_items) < 2 or len(predicted_items) != len(expected_items):
        return False
    return all(predicted_item and expected_item and _scalars_match(predicted_item.strip(), expected_item.strip())
               for predicted_item, expected_item in zip(predicted_items, expected_items))


def _unquote(text: str) -> str:
    # BBEH counts answers equal once every quote character is removed.
    for quote in _QUOTES:
        text = text.replace(quote, "")
    return text.strip()


def _unenclose(text: str) -> str:
    for opening, closing in _ENCLOSING:
        if len(text) >= 2 and text.startswith(opening) and text.endswith(closing):
            return text[1:-1].strip()
    return text


def _option_letter(text: str, allow_text: bool = False) -> str | None:
    """Return the option letter that a normalised answer names, or None.

    Accepts ``a``, ``(a)``, ``a)`` and ``option a``. With ``allow_text``, a
    parenthesised letter followed by the option's text (``(b) the fugitive``)
    names that letter too; a bare letter followed by text (``a cat``) does not.
    """
    match = _OPTION.match(text)
    if match:
        return match.group(1)
    if allow_text:
        match = _OPTION_WITH_TEXT.match(text)
        if match:
            return match.group(1)
    return None


def parse_number(text: str) -> float | None:
    """Parse a normalised answer as a number, or return None.

    Accepts integers, decimals, scientific notation, thousands separators
    (``1,000``), a percent sign, a leading ``$`` and simple fractions
    (``3/4``). Anything else, including ``1,1,0`` or ``12 legs``, is not a
    number.
    """
    text = text.strip().removeprefix("$").removesuffix("%").strip()
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    try:
        if _NUMBER.match(text):
            value = float(text)
        elif _SIMPLE_FRACTION.match(text):
            numerator, denominator = (int(part) for part in text.split("/"))
            if denominator == 0:
                return None
            value = float(Fraction(numerator, denominator))
        else:
            return None
    except (ValueError, OverflowError):
        # Integers of thousands of digits exceed int() or float() limits.
        return None
    return value if math.isfinite(value) else None
