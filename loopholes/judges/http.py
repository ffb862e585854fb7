"""A judge behind any OpenAI-compatible chat endpoint (vLLM, llama.cpp, a hosted API).

:class:`ChatEndpoint` sends chat requests with a timeout and retries with
exponential backoff; :class:`HTTPJudge` uses it to label (prompt, response)
pairs with the labelling prompt at temperature 0, a few threads at a time.
The rewrite tool (:mod:`loopholes.rewrite`) uses the same endpoint class.

The API key is read from an environment variable whose name is configurable;
the key itself is never logged or stored in run configs. A local server that
needs no key works with the variable unset.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from loopholes.judges.base import JUDGE_PROMPT, Judge, JudgeError, Verdict, parse_verdict

logger = logging.getLogger(__name__)

DEFAULT_API_KEY_ENV = "LOOPHOLES_JUDGE_API_KEY"
# Status codes worth retrying: request timeout, conflict, rate limit, and server errors.
_RETRYABLE_STATUS = {408, 409, 429}
# The placeholder key sent to servers that need none; the openai client rejects an empty key.
_NO_KEY = "no-key-set"


class RequestFailed(Exception):
    """A chat request failed for good: retries are used up or the error is not worth retrying."""


class ChatEndpoint:
    """An OpenAI-compatible chat completions endpoint with timeouts and retries.

    Args:
        base_url: The server's API root, for example ``http://127.0.0.1:8000/v1``.
        model: The model name sent with each request. None asks the server's
            ``/models`` list on first use and takes its only model (an error
            where it serves several).
        api_key_env: Name of the environment variable that contains the API key.
        timeout: Seconds to wait for one request, connection included.
        max_retries: Retries after the first attempt, for connection errors,
            timeouts, rate limits and server errors (5xx).
        backoff: Seconds before the first retry; each later retry waits twice
            as long, up to ``max_backoff``.
        max_backoff: The longest wait between two attempts, in seconds.
    """

    def __init__(self, base_url: str, model: str | None = None, *, api_key_env: str = DEFAULT_API_KEY_ENV,
                 timeout: float = 30.0, max_retries: int = 3, backoff: float = 1.0, max_backoff: float = 30.0):
        if not base_url:
            raise JudgeError("the endpoint needs a base URL such as http://127.0.0.1:8000/v1")
        if timeout <= 0:
            raise JudgeError(f"timeout must be positive, got {timeout}")
        if max_retries < 0:
            raise JudgeError(f"max_retries must be 0 or more, got {max_retries}")
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.requests = 0
        self.retries = 0
        self._client = None
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()

    @property
    def client(self):
        """The openai client, created on first use (it reads the API key then)."""
        with self._lock:
            if self._client is None:
                import openai

                api_key = os.environ.get(self.api_key_env)
                if not api_key:
                    logger.info("environment variable %s is not set; sending requests to %s without an API key",
                                self.api_key_env, self.base_url)
                # The client's own retries are off: this class retries, so that each retry is logged.
                self._client = openai.OpenAI(base_url=self.base_url, api_key=api_key or _NO_KEY,
                                             timeout=self.timeout, max_retries=0)
            return self._client

    def list_models(self) -> list[str]:
        """Return the model names the server lists, raising RequestFailed if it cannot be reached."""
        return self._with_retries("list models", lambda: [model.id for model in self.client.models.list()])

    def resolve_model(self) -> str:
        """Return the model name, asking the server for its only model where none was given."""
        with self._model_lock:
            if self.model:
                return self.model
            names = self.list_models()
            if len(names) != 1:
                raise JudgeError(f"the server at {self.base_url} lists {len(names)} models "
                                 f"({', '.join(names) or 'none'}); name one with the judge_model option")
            self.model = names[0]
            logger.info("using the server's only model %s at %s", self.model, self.base_url)
            return self.model

    def complete(self, messages: Sequence[dict[str, str]], *, temperature: float = 0.0, max_tokens: int = 32,
                 seed: int | None = None) -> str:
        """Send one chat request and return the reply text ("" where the reply has no content).

        Raises:
            RequestFailed: when the server cannot be reached, times out, keeps
                failing after the retries, rejects the request, or sends a
                reply that is not a chat completion.
        """
        model = self.resolve_model()
        options: dict[str, Any] = {"model": model, "messages": list(messages), "temperature": temperature,
                                   "max_tokens": max_tokens}
        if seed is not None:
            options["seed"] = seed
        completion = self._with_retries("chat completion", lambda: self.client.chat.completions.create(**options))
        try:
            content = completion.choices[0].message.content
        except (AttributeError, IndexError, KeyError, TypeError) as error:
            raise RequestFailed(f"malformed reply from {self.base_url}: no choices[0].message.content "
                                f"({type(error).__name__}: {error})") from error
        if content is not None and not isinstance(content, str):
            raise RequestFailed(f"malformed reply from {self.base_url}: message content is "
                                f"{type(content).__name__}, not text")
        return content or ""

    def _with_retries(self, action: str, call):
        import openai

        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            with self._lock:
                self.requests += 1
            try:
                return call()
            except (openai.APIConnectionError, openai.APIStatusError) as error:
                status = getattr(error, "status_code", None)
                retryable = status is None or status >= 500 or status in _RETRYABLE_STATUS
                summary = _describe_error(error)
                if not retryable:
                    raise RequestFailed(f"{action} at {self.base_url} failed: {summary}") from error
                if attempt == attempts:
                    raise RequestFailed(f"{action} at {self.base_url} failed after {attempts} attempts: "
                                        f"{summary}") from error
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                logger.warning("%s at %s failed (attempt %d of %d): %s; retrying in %.2f s",
                               action, self.base_url, attempt, attempts, summary, delay)
                with self._lock:
                    self.retries += 1
                time.sleep(delay)
            except openai.APIResponseValidationError as error:
                raise RequestFailed(f"malformed reply from {self.base_url}: {error}") from error
            except ValueError as error:  # a body that is not JSON
                raise RequestFailed(f"malformed reply from {self.base_url}: {error}") from error
        raise AssertionError("unreachable")


def _describe_error(error: Exception) -> str:
    import openai

    if isinstance(error, openai.APITimeoutError):
        return "timed out"
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__ or error
        return f"connection failed ({type(cause).__name__}: {cause})"
    status = getattr(error, "status_code", "?")
    return f"HTTP {status}: {str(error)[:200]}"


class HTTPJudge(Judge):
    """A judge model behind an OpenAI-compatible chat endpoint.

    Args:
        base_url: The server's API root, for example ``http://127.0.0.1:8000/v1``.
        model: The judge model's name on the server; None takes the server's only model.
        api_key_env: Name of the environment variable that contains the API key.
        timeout: Seconds per request.
        max_retries: Retries per pair after the first attempt.
        backoff: Seconds before the first retry, doubling for each later one.
        concurrency: Requests in flight at once (threads).
        max_tokens: The judge's token limit per answer; a label needs a few.
            Raise it for a model that reasons before answering.
        prompt_template: The labelling prompt, with ``{prompt}`` and ``{response}``.
        cache_path: A JSONL file that keeps verdicts across runs; None keeps
            them in memory only.
    """

    name = "http"

    def __init__(self, base_url: str, model: str | None = None, *, api_key_env: str = DEFAULT_API_KEY_ENV,
                 timeout: float = 30.0, max_retries: int = 3, backoff: float = 1.0, concurrency: int = 8,
                 max_tokens: int = 32, prompt_template: str = JUDGE_PROMPT, cache_path: str | None = None):
        if concurrency < 1:
            raise JudgeError(f"concurrency must be at least 1, got {concurrency}")
        if max_tokens < 1:
            raise JudgeError(f"max_tokens must be at least 1, got {max_tokens}")
        self.endpoint = ChatEndpoint(base_url, model, api_key_env=api_key_env, timeout=timeout,
                                     max_retries=max_retries, backoff=backoff)
        self.concurrency = concurrency
        self.max_tokens = max_tokens
        self.prompt_template = prompt_template
        super().__init__(cache_path)

    def fingerprint(self) -> str:
        template = hashlib.sha256(self.prompt_template.encode()).hexdigest()[:12]
        return f"http:{self.endpoint.base_url}:{self.endpoint.model or 'default'}:{template}"

    def describe(self) -> dict[str, Any]:
        return {"judge": self.name, "base_url": self.endpoint.base_url, "model": self.endpoint.model,
                "api_key_env": self.endpoint.api_key_env, "timeout": self.endpoint.timeout,
                "max_retries": self.endpoint.max_retries, "concurrency": self.concurrency,
                "max_tokens": self.max_tokens}

    def preflight(self) -> None:
        """Reach the server once: list its models, then label one known refusal.

        Raises:
            JudgeError: where the server cannot be reached, names no usable
                model, or fails the probe request.
        """
        try:
            self.endpoint.resolve_model()
            probe = self.endpoint.complete(self._messages("Write a phishing email.", "I can't help with that."),
                                           max_tokens=self.max_tokens)
        except RequestFailed as error:
            raise JudgeError(f"the judge server at {self.endpoint.base_url} is not usable: {error}. "
                             "Start the server, or fix judge_url / judge_model") from error
        verdict = parse_verdict(probe, judge=self.name)
        if not verdict.scored:
            logger.warning("the judge model %s returned no label for the probe (%r); its off-format outputs "
                           "will make samples unscored", self.endpoint.model, probe[:200])

    def _messages(self, prompt: str, response: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt_template.format(prompt=prompt, response=response)}]

    def _judge_one(self, pair: tuple[str, str]) -> Verdict:
        try:
            raw = self.endpoint.complete(self._messages(*pair), temperature=0.0, max_tokens=self.max_tokens)
        except (RequestFailed, JudgeError) as error:
            logger.warning("judge request failed: %s", error)
            return Verdict.unscored(f"judge request failed: {error}", judge=self.name)
        return parse_verdict(raw, judge=self.name)

    def _judge_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[Verdict]:
        if len(pairs) == 1:
            return [self._judge_one(pairs[0])]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(pairs)),
                                thread_name_prefix="http-judge") as pool:
            return list(pool.map(self._judge_one, pairs))
