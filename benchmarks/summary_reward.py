"""Benchmark the summary game's reward computation against rouge-score's own scorer.

Usage:
    python benchmarks/summary_reward.py [--data PATH_OR_builtin] [--split test] [--repeats 5]
                                         [--tokenizer embedded] [--output FILE.md]

For every article of the data set it times two kinds of completion. One is a
short summary (the article's first three sentences). The other is a full copy
of the article, which the vulnerable reward pays most for and which is the
slowest to score.
Each row of the table compares one computation two ways, on the same inputs,
in the same process:

- the vulnerable reward, ROUGE-L F1 against the article: rouge-score's
  ``RougeScorer(["rougeL"], use_stemmer=True)`` against this package's
  ``rouge_between`` (cached article tokens, bit-parallel LCS);
- the whole outcome: a direct implementation with rouge-score and sacreBLEU
  (ROUGE-1 and ROUGE-L against the article, sentence BLEU, ROUGE-1/2/L against
  the lead-3 pseudo-reference) against ``SummaryGame.score``. The latter also
  computes the copy rate, the length ratio in the policy tokenizer and both
  rewards.

"cold" clears every cache before each pass over the data; "warm" scores the
same articles again, as GRPO does for the completions of one group. Before
timing, the script checks that both implementations give equal ROUGE values
on every input.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rouge_score import rouge_scorer

from loopholes.data import load_samples
from loopholes.games import make_game
from loopholes.games import summary as summary_game


def clear_caches() -> None:
    for cached in (summary_game._cached_profile, summary_game._article_ngram_set,
                   summary_game._count_article_tokens, summary_game._stem):
        cached.cache_clear()


def throughput(pairs: list[tuple[str, str]], compute: Callable[[str, str], object], repeats: int,
               cold: bool) -> list[float]:
    """Return summaries per second of each of ``repeats`` passes over all (article, completion) pairs."""
    rates = []
    for _ in range(repeats):
        if cold:
            clear_caches()
        start = time.perf_counter()
        for article, completion in pairs:
            compute(article, completion)
        rates.append(len(pairs) / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="builtin", help="'builtin' or a reference-format parquet file or folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per measurement")
    parser.add_argument("--tokenizer", default="embedded", help="the game's tokenizer option")
    parser.add_argument("--output", type=Path, help="also write the markdown table to this file")
    arguments = parser.parse_args()

    game = make_game("summary", "vulnerable", {"tokenizer": arguments.tokenizer})
    samples = load_samples(game, arguments.data, arguments.split)
    by_article = {sample.metadata["article"]: sample for sample in samples}
    articles = list(by_article)
    lengths = sorted(len(article.split()) for article in articles)
    kinds = {
        "summary (lead-3)": [(article, summary_game.lead_sentences(article, 3)) for article in articles],
        "copy of the article": [(article, article) for article in articles],
    }

    rouge_l_scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    full_scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)

    def baseline_reward(article: str, completion: str) -> float:
        return rouge_l_scorer.score(article, completion)["rougeL"].fmeasure

    def fast_reward(article: str, completion: str) -> float:
        against_article = summary_game.rouge_between(summary_game._cached_profile(article),
                                                     summary_game._build_profile(completion))
        return summary_game.vulnerable_reward(against_article)

    def baseline_outcome(article: str, completion: str) -> float:
        import sacrebleu

        against_article = full_scorer.score(article, completion)
        bleu = sacrebleu.sentence_bleu(completion, [article]).score
        lead = full_scorer.score(summary_game.lead_sentences(article, 3), completion)
        return against_article["rougeL"].fmeasure + bleu + lead["rouge1"].fmeasure

    def fast_outcome(article: str, completion: str) -> float:
        return game.score(by_article[article], completion).reward

    for pairs in kinds.values():
        for article, completion in pairs:
            if baseline_reward(article, completion) != fast_reward(article, completion):
                sys.exit(f"ROUGE-L differs from rouge-score on an article of {len(article.split())} words")
    game.score(samples[0], "warm up the tokenizer")

    rows = []
    for kind, pairs in kinds.items():
        for label, baseline, fast in [("vulnerable reward (ROUGE-L)", baseline_reward, fast_reward),
                                      ("whole outcome", baseline_outcome, fast_outcome)]:
            base_rates = throughput(pairs, baseline, max(1, arguments.repeats // 2), cold=True)
            cold_rates = throughput(pairs, fast, arguments.repeats, cold=True)
            warm_rates = throughput(pairs, fast, arguments.repeats, cold=False)
            base = statistics.median(base_rates)
            cold = statistics.median(cold_rates)
            warm = statistics.median(warm_rates)
            rows.append(f"| {label} | {kind} | {base:,.0f} | {cold:,.0f} | {warm:,.0f} | "
                        f"{cold / base:,.1f}x | {warm / base:,.1f}x |")

    header = [
        f"Data: {arguments.data} ({arguments.split}), {len(articles)} articles of "
        f"{lengths[0]}-{lengths[-1]} words (median {statistics.median(lengths):.0f}); "
        f"tokenizer {arguments.tokenizer!r}; median of {arguments.repeats} passes "
        f"({max(1, arguments.repeats // 2)} for rouge-score).",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"Python {platform.python_version()}.",
        "",
        "| computation | completion | rouge-score baseline (summaries/s) | this package, cold | "
        "this package, warm | cold / baseline | warm / baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    table = "\n".join(header + rows)
    print(table)
    if arguments.output:
        arguments.output.write_text(table + "\n")


if __name__ == "__main__":
    main()
