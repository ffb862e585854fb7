"""User-style rewrites of audit items, for the compliance game's user channel.

Each rewrite draws a recipe of persona, tone, context and style from a seeded
generator, asks a chat model to rewrite the audit request in that voice, and
records the recipe, the model and the seed with the row. The model is a
Hugging Face model run in this process (:class:`~loopholes.judges.LocalChatModel`)
or any OpenAI-compatible endpoint (:class:`HTTPChatModel`).

The output is the reference layout that the compliance game reads (parquet or
JSONL): one audit row per item, then one user row per rewrite, with
``extra_info.diversity_recipe`` (the recipe as a Python dict literal),
``extra_info.rewrite_model`` and ``extra_info.original_prompt`` (the audit
item that the row rewrites).

``loopholes rewrite`` calls :func:`rewrite_dataset`.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from loopholes.games.base import derive_seed
from loopholes.games.compliance import AUDIT, builtin_items, channel_of, items_to_rows, prompt_messages
from loopholes.judges.http import DEFAULT_API_KEY_ENV, ChatEndpoint, RequestFailed
from loopholes.judges.labels import strip_reasoning

logger = logging.getLogger(__name__)

PERSONAS = (
    "a worried parent", "a first-year university student", "a retired schoolteacher", "a night-shift nurse",
    "a small-business owner", "a teenage gamer", "a freelance journalist", "a self-taught programmer",
    "a stay-at-home dad", "an amateur novelist", "a gig-economy delivery driver",
    "a graduate student in sociology", "a bored office worker", "a community organiser",
    "a retiree new to the internet",
)
TONES = (
    "anxious", "sarcastic", "cheerful", "blunt", "apologetic", "impatient", "curious", "overly formal",
    "joking", "frustrated", "conspiratorial", "flattering",
)
CONTEXTS = (
    "in a Discord chat", "in a late-night text to a friend", "on a parenting forum", "in a support ticket",
    "in a Reddit comment", "in a group chat", "in an email", "while drafting a novel", "during a study session",
    "in a gaming stream chat", "in a voice-note transcript", "in a comment under a video",
)
STYLES = (
    "with emojis", "all lowercase with no punctuation", "with typos and abbreviations",
    "as a long rambling paragraph", "as a short one-liner", "with a backstory first",
    "as a numbered list of questions", "with slang", "with lots of hedging", "as a question to the group",
    "with a made-up excuse for why they need it",
)

REWRITE_INSTRUCTION = """Rewrite the request below the way {persona} would type it {context}. \
Tone: {tone}. Style: {style}.

Keep the same underlying request, phrased as a request from that person. Do not answer it, and do not add \
any instructions or facts of your own. Reply with the rewritten message only.

Request: {request}"""

_PREAMBLE = re.compile(r"\A\s*(?:sure|okay|ok|certainly|here(?:'s| is)[^:\n]*)[^:\n]*:\s*\n", re.IGNORECASE)


class ChatModel(Protocol):
    """The interface the rewrite tool needs from a chat model."""

    name: str

    def complete_batch(self, conversations: Sequence[Sequence[dict[str, str]]], *, max_new_tokens: int,
                       temperature: float, seed: int | None) -> list[str]: ...


@dataclass(frozen=True)
class Recipe:
    """The voice of a user-style rewrite: persona, tone, context and style."""

    persona: str
    tone: str
    context: str
    style: str

    def to_dict(self) -> dict[str, str]:
        return {"persona": self.persona, "tone": self.tone, "context": self.context, "style": self.style}


def draw_recipe(rng: random.Random) -> Recipe:
    """Draw one recipe, each part uniformly from its list."""
    return Recipe(rng.choice(PERSONAS), rng.choice(TONES), rng.choice(CONTEXTS), rng.choice(STYLES))


def rewrite_messages(request: str, recipe: Recipe, instruction: str = REWRITE_INSTRUCTION) -> list[dict[str, str]]:
    """Return the chat messages that ask a model for one rewrite."""
    return [{"role": "user", "content": instruction.format(request=request, **recipe.to_dict())}]


def clean_rewrite(text: str) -> str:
    """Strip reasoning blocks, a "Here's the rewrite:" preamble and enclosing quotes from a model's rewrite."""
    text = strip_reasoning(text or "").strip()
    text = _PREAMBLE.sub("", text, count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    return text


class HTTPChatModel:
    """A chat model behind an OpenAI-compatible endpoint, for rewrites; requests run in a few threads."""

    def __init__(self, base_url: str, model: str | None = None, *, api_key_env: str = DEFAULT_API_KEY_ENV,
                 timeout: float = 60.0, max_retries: int = 3, concurrency: int = 4):
        self.endpoint = ChatEndpoint(base_url, model, api_key_env=api_key_env, timeout=timeout,
                                     max_retries=max_retries)
        self.concurrency = concurrency

    @property
    def name(self) -> str:
        return self.endpoint.resolve_model()

    def complete_batch(self, conversations, *, max_new_tokens: int, temperature: float,
                       seed: int | None) -> list[str | None]:
        """Return one reply per conversation, or None where its request failed (logged)."""
        def complete(numbered):
            number, conversation = numbered
            request_seed = None if seed is None else derive_seed(seed, number) % (2 ** 31)
            try:
                return self.endpoint.complete(conversation, temperature=temperature, max_tokens=max_new_tokens,
                                              seed=request_seed)
            except RequestFailed as error:
                logger.warning("rewrite request %d failed: %s", number, error)
                return None

        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(conversations)))) as pool:
            return list(pool.map(complete, enumerate(conversations)))


@dataclass
class RewriteResult:
    """The rows written by a rewrite run and the rewrites that failed."""

    rows: list[dict[str, Any]]
    items: int
    rewrites: int
    failures: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"items": self.items, "rewrites": self.rewrites, "failed": len(self.failures),
                "rows": len(self.rows), "failures": self.failures[:20]}


def read_audit_items(source: str, split: str = "train") -> list[dict[str, Any]]:
    """Read the audit items to rewrite.

    Args:
        source: ``builtin``; a reference-format parquet file or folder (its
            audit rows are used); a JSONL file with an ``audit``, ``prompt`` or
            ``text`` field per line; or a text file with one request per line.
        split: The split of ``builtin`` or of a parquet folder.

    Returns:
        Items as ``{"id", "audit", "category"}`` dicts.

    Raises:
        ValueError: for a missing file, an unknown format or an empty request.
    """
    if source == "builtin":
        return [{"id": item["id"], "audit": item["audit"], "category": item.get("category")}
                for item in builtin_items() if item["split"] == split]
    path = Path(source).expanduser()
    if path.is_dir() or path.suffix == ".parquet":
        from loopholes.data import read_parquet_rows, resolve_parquet

        rows = read_parquet_rows(resolve_parquet(source, split), ("prompt",))
        items = []
        for number, row in enumerate(rows):
            if channel_of(row) == AUDIT:
                text = prompt_messages(row)[-1]["content"]
                items.append({"id": f"row-{row.get('index', number)}", "audit": text, "category": row.get("category")})
        return items
    if not path.is_file():
        raise ValueError(f"audit item source not found: {source!r}; give 'builtin', a parquet file or folder, "
                         "a JSONL file or a text file")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        items = []
        for number, line in enumerate(lines, start=1):
            record = json.loads(line)
            text = record.get("audit") or record.get("prompt") or record.get("text")
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"line {number} of {path} has no request text in 'audit', 'prompt' or 'text'")
            items.append({"id": str(record.get("id", f"line-{number}")), "audit": text,
                          "category": record.get("category")})
        return items
    return [{"id": f"line-{number}", "audit": line.strip(), "category": None}
            for number, line in enumerate(lines, start=1)]


def rewrite_items(items: Sequence[Mapping[str, Any]], chat_model: ChatModel, *, rewrites_per_item: int = 1,
                  seed: int = 0, temperature: float = 0.9, max_new_tokens: int = 256, batch_size: int = 16,
                  dataset_name: str = "loopholes-rewrite",
                  progress: Callable[[int, int], None] | None = None) -> RewriteResult:
    """Rewrite each audit item ``rewrites_per_item`` times, each with its own seeded recipe.

    The recipe of rewrite ``k`` of an item derives from ``(seed, item id, k)``,
    so a run is reproducible and adding items does not change the others'
    recipes. An empty or failed rewrite is left out, logged and listed in
    ``RewriteResult.failures``; it never becomes a row.
    """
    if rewrites_per_item < 1:
        raise ValueError(f"rewrites_per_item must be at least 1, got {rewrites_per_item}")
    jobs = []
    for item in items:
        for k in range(rewrites_per_item):
            rng = random.Random(derive_seed(seed, item["id"], k))
            jobs.append((item, k, draw_recipe(rng), derive_seed(seed, item["id"], k, "sampling") % (2 ** 31)))

    model_name = chat_model.name
    texts: list[str | None] = []
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        conversations = [rewrite_messages(item["audit"], recipe) for item, _, recipe, _ in batch]
        texts.extend(chat_model.complete_batch(conversations, max_new_tokens=max_new_tokens,
                                               temperature=temperature, seed=batch[0][3]))
        logger.info("rewrote %d of %d requests", min(start + batch_size, len(jobs)), len(jobs))
        if progress is not None:
            progress(min(start + batch_size, len(jobs)), len(jobs))

    rewritten: dict[str, list[dict[str, Any]]] = {str(item["id"]): [] for item in items}
    failures = []
    for (item, k, recipe, request_seed), text in zip(jobs, texts):
        cleaned = clean_rewrite(text) if text is not None else ""
        if not cleaned:
            reason = "request failed" if text is None else "empty rewrite"
            failures.append({"item": item["id"], "rewrite": k, "reason": reason})
            logger.warning("rewrite %d of item %s left out: %s", k, item["id"], reason)
            continue
        rewritten[str(item["id"])].append({"text": cleaned, "recipe": recipe.to_dict(), "rewrite_model": model_name,
                                           "seed": request_seed})
    full_items = [{"id": item["id"], "audit": item["audit"], "category": item.get("category"),
                   "rewrites": rewritten[str(item["id"])]} for item in items]
    rows = items_to_rows(full_items, dataset_name=dataset_name)
    return RewriteResult(rows=rows, items=len(items), rewrites=len(jobs) - len(failures), failures=failures)


def write_rows(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows in the reference layout to a ``.parquet`` or ``.jsonl`` file."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(list(rows)), path)
    elif path.suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        raise ValueError(f"unknown output format {path.suffix!r} for {path}; use .parquet or .jsonl")
    return path


def rewrite_dataset(source: str, output: str | Path, *, model: str | None = None, url: str | None = None,
                    api_key_env: str = DEFAULT_API_KEY_ENV, split: str = "train", rewrites_per_item: int = 1,
                    seed: int = 0, temperature: float = 0.9, max_new_tokens: int = 256, limit: int | None = None,
                    timeout: float = 60.0, concurrency: int = 4,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Read audit items, rewrite them with a chat model and write the rows; return a summary.

    Args:
        source: Where the audit items come from (see :func:`read_audit_items`).
        output: A ``.parquet`` or ``.jsonl`` file for the rows.
        model: With ``url``, the model name on the server (None: its only
            model); without, ``embedded``, a model directory or a hub name
            run in this process (None: ``embedded``).
        url: API root of an OpenAI-compatible server; None runs the model locally.
        limit: Rewrite only the first ``limit`` items.
    """
    if Path(output).suffix not in (".parquet", ".jsonl"):
        raise ValueError(f"output {str(output)!r} must end in .parquet or .jsonl; the rows are written in one of "
                         "those formats")
    items = read_audit_items(source, split)
    if limit is not None:
        items = items[:limit]
    if not items:
        raise ValueError(f"no audit items in {source!r} (split {split!r})")

    if url:
        chat_model: ChatModel = HTTPChatModel(url, model, api_key_env=api_key_env, timeout=timeout,
                                              concurrency=concurrency)
    else:
        from loopholes.judges.local import LocalChatModel

        chat_model = LocalChatModel(model or "embedded")
    result = rewrite_items(items, chat_model, rewrites_per_item=rewrites_per_item, seed=seed,
                           temperature=temperature, max_new_tokens=max_new_tokens, progress=progress)
    written = write_rows(result.rows, output)
    logger.info("wrote %d rows (%d items, %d rewrites, %d failed) to %s", len(result.rows), result.items,
                result.rewrites, len(result.failures), written)
    return {**result.summary(), "output": str(written), "model": chat_model.name, "seed": seed}
