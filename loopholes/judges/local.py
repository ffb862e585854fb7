"""A judge model run in-process with transformers.

:class:`LocalChatModel` loads any causal LM that :func:`loopholes.models.load_model`
accepts (``embedded``, a model directory, a hub name) on first use and
generates chat replies in batches; :class:`LocalJudge` uses it to label
(prompt, response) pairs with the labelling prompt and greedy decoding. The
rewrite tool (:mod:`loopholes.rewrite`) uses the same model class.

torch and transformers are imported only when a model is loaded, so importing
this module (and the games) stays light.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

from loopholes.judges.base import JUDGE_PROMPT, Judge, JudgeError, Verdict, parse_verdict

logger = logging.getLogger(__name__)


class LocalChatModel:
    """A chat model loaded in this process.

    Args:
        model: ``embedded``, a model directory or a Hugging Face hub name.
        dtype: ``auto``, ``float32`` or ``bfloat16``.
        device: ``cpu``, ``cuda`` or None for the best available.
        batch_size: Conversations generated together.
        model_and_tokenizer: An already loaded ``(model, tokenizer)`` pair to
            use instead of loading ``model``.
    """

    def __init__(self, model: str = "embedded", *, dtype: str = "auto", device: str | None = None,
                 batch_size: int = 8, model_and_tokenizer: tuple[Any, Any] | None = None):
        if batch_size < 1:
            raise JudgeError(f"batch_size must be at least 1, got {batch_size}")
        self.name = model
        self.dtype = dtype
        self.device = device
        self.batch_size = batch_size
        self._loaded = model_and_tokenizer
        self._lock = threading.Lock()

    def load(self) -> tuple[Any, Any]:
        """Load the model and tokenizer once; raise JudgeError where they cannot be loaded."""
        with self._lock:
            if self._loaded is None:
                from loopholes.models import ModelError, load_model

                logger.info("loading the local model %s", self.name)
                try:
                    self._loaded = load_model(self.name, dtype=self.dtype, device=self.device)
                except (ModelError, OSError, ValueError) as error:
                    raise JudgeError(f"cannot load the local model {self.name!r}: {error}") from error
            return self._loaded

    def complete_batch(self, conversations: Sequence[Sequence[dict[str, str]]], *, max_new_tokens: int = 32,
                       temperature: float = 0.0, seed: int | None = None) -> list[str]:
        """Generate one reply per conversation; greedy at temperature 0, sampled above it."""
        replies: list[str] = []
        for start in range(0, len(conversations), self.batch_size):
            batch = conversations[start:start + self.batch_size]
            replies.extend(self._generate(batch, max_new_tokens, temperature, seed))
        return replies

    def _generate(self, conversations, max_new_tokens: int, temperature: float, seed: int | None) -> list[str]:
        import torch

        model, tokenizer = self.load()
        texts = [self._render(tokenizer, conversation) for conversation in conversations]
        padding_side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tokenizer.padding_side = padding_side
        inputs = {key: value.to(model.device) for key, value in inputs.items()}

        options: dict[str, Any] = {"max_new_tokens": max_new_tokens,
                                   "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id}
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature, top_p=0.95)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with self._lock, torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            output = model.generate(**inputs, **options)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    @staticmethod
    def _render(tokenizer, conversation: Sequence[dict[str, str]]) -> str:
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(list(conversation), add_generation_prompt=True, tokenize=False)
        # A base model without a chat template gets the messages as plain text.
        return "\n\n".join(message["content"] for message in conversation) + "\n\n"


class LocalJudge(Judge):
    """A judge model run in-process with transformers, greedy decoding.

    Args:
        model: ``embedded``, a model directory or a hub name.
        max_tokens: New tokens per answer; a label needs a few.
        batch_size: Pairs judged in one forward batch.
        prompt_template: The labelling prompt, with ``{prompt}`` and ``{response}``.
        cache_path: A JSONL file that keeps verdicts across runs; None keeps
            them in memory only.
        chat_model: An existing :class:`LocalChatModel` to share, for example
            with the policy's own weights in a test.
    """

    name = "local"

    def __init__(self, model: str = "embedded", *, max_tokens: int = 32, batch_size: int = 8, dtype: str = "auto",
                 device: str | None = None, prompt_template: str = JUDGE_PROMPT, cache_path: str | None = None,
                 chat_model: LocalChatModel | None = None):
        if max_tokens < 1:
            raise JudgeError(f"max_tokens must be at least 1, got {max_tokens}")
        self.chat_model = chat_model or LocalChatModel(model, dtype=dtype, device=device, batch_size=batch_size)
        self.max_tokens = max_tokens
        self.prompt_template = prompt_template
        super().__init__(cache_path)

    def fingerprint(self) -> str:
        template = hashlib.sha256(self.prompt_template.encode()).hexdigest()[:12]
        return f"local:{self.chat_model.name}:{template}"

    def describe(self) -> dict[str, Any]:
        return {"judge": self.name, "model": self.chat_model.name, "max_tokens": self.max_tokens,
                "batch_size": self.chat_model.batch_size}

    def preflight(self) -> None:
        """Load the model now, so that a bad path fails before training starts."""
        self.chat_model.load()

    def _judge_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[Verdict]:
        conversations = [[{"role": "user", "content": self.prompt_template.format(prompt=p, response=r)}]
                         for p, r in pairs]
        try:
            raws = self.chat_model.complete_batch(conversations, max_new_tokens=self.max_tokens)
        except JudgeError as error:
            logger.warning("local judge failed: %s", error)
            return [Verdict.unscored(f"local judge failed: {error}", judge=self.name) for _ in pairs]
        return [parse_verdict(raw, judge=self.name) for raw in raws]
