"""The summary game's own ROUGE and BLEU give the values of rouge-score and sacrebleu, float for float.

The game tokenises each article once and uses a bit-parallel longest common
subsequence. These tests compare it with ``rouge_score.rouge_scorer.RougeScorer``
(``use_stemmer=True``) and ``sacrebleu.sentence_bleu`` on real articles, the
built-in data and generated text.
"""

from __future__ import annotations

import random

import pytest
import sacrebleu
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from loopholes.data import read_parquet_rows
from loopholes.games import make_game
from loopholes.games.summary import _build_profile as profile
from loopholes.games.summary import lcs_length, lead_sentences, rouge, rouge_tokens, sentence_bleu

SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def assert_equal_to_rouge_score(target: str, prediction: str) -> None:
    expected = SCORER.score(target, prediction)
    actual = rouge(target, prediction)
    assert actual.rouge1 == expected["rouge1"].fmeasure
    assert actual.rouge2 == expected["rouge2"].fmeasure
    assert actual.rouge_l == expected["rougeL"].fmeasure


def lcs_table_length(first: list[str], second: list[str]) -> int:
    previous = [0] * (len(second) + 1)
    for token in first:
        current = [0]
        for j, other in enumerate(second, 1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def derived_predictions(article: str, rng: random.Random) -> list[str]:
    """Build summaries of the kinds a policy writes: extracts, shuffles, fragments."""
    words = article.split()
    sentences = lead_sentences(article, 1000).split(". ")
    shuffled = sentences[:]
    rng.shuffle(shuffled)
    return [
        " ".join(words[:60]),
        " ".join(words[::3]),
        " ".join(rng.sample(words, min(80, len(words)))),
        ". ".join(shuffled[:4]),
        lead_sentences(article, 3).upper(),
        "Summary: " + " ".join(words[-40:]) + " and so on and so on.",
    ]


@pytest.fixture(scope="module")
def reference_articles():
    from conftest import shared_seed_dir

    seed = shared_seed_dir()
    if seed is None:
        pytest.skip("reference seed data not found")
    return [row["reward_model"]["original_article"]
            for row in read_parquet_rows(seed / "proxy_gaming" / "test.parquet")]


def test_equal_on_reference_articles(reference_articles):
    # Every third article keeps the file fast; the slow test below covers all of them.
    rng = random.Random(0)
    for article in reference_articles[::3]:
        for prediction in derived_predictions(article, rng):
            assert_equal_to_rouge_score(article, prediction)


@pytest.mark.slow
def test_equal_on_all_reference_articles(reference_articles):
    rng = random.Random(2)
    for article in reference_articles:
        for prediction in derived_predictions(article, rng) + [article]:
            assert_equal_to_rouge_score(article, prediction)


def test_equal_on_copied_articles(reference_articles):
    # rouge-score needs about 50 ms per copied article, so a sample of ten.
    for article in reference_articles[:10]:
        assert_equal_to_rouge_score(article, article)
        assert_equal_to_rouge_score(article, article + " " + article)


def test_equal_on_builtin_references():
    scorer = make_game("summary", "secure", {"tokenizer": "whitespace"})
    rows = scorer.builtin_rows("train") + scorer.builtin_rows("test")
    for position, row in enumerate(rows):
        other = rows[(position + 1) % len(rows)]
        assert_equal_to_rouge_score(row["summary"], row["summary"])
        assert_equal_to_rouge_score(row["summary"], other["summary"])
        assert_equal_to_rouge_score(row["summary"], lead_sentences(row["article"], 3))
        assert_equal_to_rouge_score(row["article"], row["summary"])


EDGE_PAIRS = [
    ("", ""),
    ("", "some words"),
    ("some words", ""),
    ("!!! ...", "???"),
    ("Running runs ran runner", "run running RUNS"),
    ("İstanbul Kelvin \u212a K", "i k istanbul"),
    ("naïve café résumé", "naive cafe resume"),
    ("3.14 is pi; 2,000 people", "3 14 2 000"),
    ("a a a a a a", "a a"),
    ("the the the", "the cat the cat the"),
    ("über straße", "ber stra e"),
]


@pytest.mark.parametrize("target, prediction", EDGE_PAIRS)
def test_equal_on_edge_pairs(target, prediction):
    assert_equal_to_rouge_score(target, prediction)


WORDS = ["the", "cat", "cats", "running", "runs", "ran", "a", "on", "mat", "mats", "generously",
         "generous", "universities", "university", "2015", "4:23", "U.S.", "don't", "é", "naïve", "İ",
         "\u212a", "Ⅻ", "ß", "fish-market", "—", "...", "(CNN)", "OMG!", "\n", "  "]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=60), st.lists(st.sampled_from(WORDS), max_size=60))
def test_equal_on_generated_word_sequences(target_words, prediction_words):
    assert_equal_to_rouge_score(" ".join(target_words), " ".join(prediction_words))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.text(max_size=200))
def test_equal_on_generated_text(target, prediction):
    assert_equal_to_rouge_score(target, prediction)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from("abcde"), max_size=120), st.lists(st.sampled_from("abcde"), max_size=120))
def test_bit_parallel_lcs_matches_table(first, second):
    assert lcs_length(profile(" ".join(first)), second) == lcs_table_length(first, second)


def test_tokens_match_rouge_score_tokenizer(reference_articles):
    from rouge_score.tokenizers import DefaultTokenizer

    tokenizer = DefaultTokenizer(use_stemmer=True)
    for article in reference_articles:
        assert rouge_tokens(article)[1] == tokenizer.tokenize(article)


BLEU_PAIRS = [
    ("", "The cat sat on the mat."),
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("cat", "The cat sat on the mat."),
    ("The mat sat on the cat, said the cat.", "The cat sat on the mat."),
    ("港口小镇投票", "Port town votes."),
]


@pytest.mark.parametrize("hypothesis_text, reference", BLEU_PAIRS)
def test_bleu_equal_to_sacrebleu(hypothesis_text, reference):
    assert sentence_bleu(hypothesis_text, reference) == sacrebleu.sentence_bleu(hypothesis_text, [reference]).score


def test_bleu_equal_on_reference_articles(reference_articles):
    rng = random.Random(1)
    for article in reference_articles[:30]:
        for prediction in derived_predictions(article, rng)[:3] + [article]:
            assert sentence_bleu(prediction, article) == sacrebleu.sentence_bleu(prediction, [article]).score
