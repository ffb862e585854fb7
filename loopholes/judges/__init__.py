"""Judges that decide whether a response complies with a harmful request.

One interface, :class:`Judge`, returns a :class:`Verdict`: harmful, not
harmful, or unscored with the reason. Three kinds:

- ``offline``: :class:`OfflineJudge`, a rule-based refusal / compliance
  classifier that needs no model or server (the default);
- ``http``: :class:`HTTPJudge`, a judge model behind any OpenAI-compatible
  chat endpoint (vLLM, llama.cpp, a hosted API);
- ``local``: :class:`LocalJudge`, a Hugging Face model run in this process.

:func:`parse_verdict` reads a judge's raw text with the strict label parse,
for judge outputs recorded elsewhere.
"""

from __future__ import annotations

from typing import Any

from loopholes.judges.base import JUDGE_PROMPT, Judge, JudgeError, Verdict, parse_verdict
from loopholes.judges.cache import VerdictCache
from loopholes.judges.http import DEFAULT_API_KEY_ENV, ChatEndpoint, HTTPJudge, RequestFailed
from loopholes.judges.labels import HARMFUL, NOT_HARMFUL, find_label, strip_reasoning
from loopholes.judges.local import LocalChatModel, LocalJudge
from loopholes.judges.offline import OfflineJudge, classify_response

JUDGE_KINDS = ("offline", "http", "local")


def make_judge(kind: str = "offline", *, url: str | None = None, model: str | None = None,
               api_key_env: str = DEFAULT_API_KEY_ENV, timeout: float = 30.0, max_retries: int = 3,
               concurrency: int = 8, max_tokens: int = 32, cache: str | None = None, **extra: Any) -> Judge:
    """Build a judge by kind.

    Args:
        kind: ``offline``, ``http`` or ``local``.
        url: The server's API root; required for ``http``.
        model: For ``http`` the model name on the server (None: its only
            model); for ``local`` a model name or path (None: ``embedded``).
        cache: A JSONL file that keeps verdicts across runs (``http`` and ``local``).
        extra: Further keyword arguments of the judge class.

    Raises:
        JudgeError: for an unknown kind or a missing URL.
    """
    if kind == "offline":
        return OfflineJudge()
    if kind == "http":
        if not url:
            raise JudgeError("the http judge needs a server URL (the judge_url option), for example "
                             "http://127.0.0.1:8000/v1")
        return HTTPJudge(url, model, api_key_env=api_key_env, timeout=timeout, max_retries=max_retries,
                         concurrency=concurrency, max_tokens=max_tokens, cache_path=cache, **extra)
    if kind == "local":
        return LocalJudge(model or "embedded", max_tokens=max_tokens, cache_path=cache, **extra)
    raise JudgeError(f"unknown judge {kind!r}; choose one of: {', '.join(JUDGE_KINDS)}")


__all__ = ["DEFAULT_API_KEY_ENV", "HARMFUL", "JUDGE_KINDS", "JUDGE_PROMPT", "NOT_HARMFUL", "ChatEndpoint",
           "HTTPJudge", "Judge", "JudgeError", "LocalChatModel", "LocalJudge", "OfflineJudge", "RequestFailed",
           "Verdict", "VerdictCache", "classify_response", "find_label", "make_judge", "parse_verdict",
           "strip_reasoning"]
