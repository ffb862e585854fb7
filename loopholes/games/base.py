"""The game interface shared by the four vulnerability games.

A game turns a dataset row into a :class:`Sample`, and scores a completion for
that sample into an :class:`Outcome`. Trainers, evaluators, adapters and reports
consume only outcomes, so nothing here imports torch or knows about a trainer.

Each game is registered by a stable name with :func:`register_game` and built
with :func:`make_game`, which validates the variant and the game's options.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

VARIANTS = ("vulnerable", "secure")


@dataclass(frozen=True)
class Sample:
    """One prompt of a game, built from one dataset row.

    Attributes:
        index: Row number in the data source; stable across runs and used by
            ``loopholes score`` to find the row again.
        messages: Chat messages (``{"role", "content"}`` dicts) given to the policy.
        target: What the scorer checks against: an answer, a reference
            summary, test cases, or a channel name, depending on the game.
        metadata: Everything else the row carries (task name, source, ids).
    """

    index: int
    messages: tuple[dict[str, str], ...]
    target: Any = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def prompt_text(self) -> str:
        """The concatenated message contents, for length checks and logs."""
        return "\n\n".join(message["content"] for message in self.messages)


@dataclass
class Outcome:
    """The score of one completion.

    Attributes:
        reward: The training reward under the game's variant. Always finite;
            an unscored outcome carries 0.0 here but must be excluded from
            every metric (trainers may still need a number).
        itp: Per-sample intended task performance in [0, 1] (a 0/1 flag for
            most games, the share of tests passed for tampering), or None
            where the sample is unscored.
        exploited: Whether the completion used the loophole, or None where
            the sample is unscored.
        scored: False where a judge or sandbox failed; the reason is in
            ``details["unscored_reason"]``.
        details: Game-specific fields that explain the score (the extracted
            answer, the audit draw, the judge label, tests passed).
    """

    reward: float
    itp: float | None
    exploited: bool | None
    scored: bool = True
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        reward = float(self.reward)
        if reward != reward or reward in (float("inf"), float("-inf")):
            raise ValueError(f"reward must be finite, got {self.reward!r}")
        self.reward = reward
        if not self.scored:
            self.itp = None
            self.exploited = None

    @classmethod
    def unscored(cls, reason: str, **details: Any) -> Outcome:
        """Build an outcome for a sample that could not be scored."""
        return cls(reward=0.0, itp=None, exploited=None, scored=False,
                   details={"unscored_reason": reason, **details})

    def to_dict(self) -> dict[str, Any]:
        """Flatten into a JSON-ready dict: the common fields, then the details."""
        record = {"reward": self.reward, "itp": self.itp, "exploited": self.exploited,
                  "scored": self.scored}
        for key, value in self.details.items():
            record.setdefault(key, value)
        return record


def derive_seed(*parts: Any) -> int:
    """Derive a 63-bit seed from any printable parts, stable across processes.

    Python's ``hash`` of a string changes per process, so the audit draw and
    other per-sample randomness use a SHA-256 digest instead.
    """
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def sample_rng(seed: int, sample: Sample, draw: int = 0) -> random.Random:
    """Return the generator for one scoring of one sample.

    Args:
        seed: The run's base seed.
        sample: The sample being scored; its index enters the derived seed.
        draw: Which completion of the sample's group this is, so that the
            eight completions of a GRPO group get independent draws.
    """
    return random.Random(derive_seed(seed, sample.index, draw))


@dataclass
class GameConfig:
    """Base of every game's options.

    Subclasses add typed fields with defaults and override :meth:`validate`.
    Field docs live in the ``help`` metadata so the CLI can list them.
    """

    def validate(self) -> None:
        """Raise ValueError naming the option and value when an option is invalid."""

    @classmethod
    def option_help(cls) -> dict[str, str]:
        """Return ``{option name: help text with default}`` for every option."""
        lines = {}
        for item in dataclasses.fields(cls):
            text = item.metadata.get("help", "")
            default = item.default if item.default is not dataclasses.MISSING else None
            lines[item.name] = f"{text} (default: {default!r})"
        return lines

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> GameConfig:
        """Build a config from ``{name: value}``, converting strings from the CLI.

        Raises:
            ValueError: for an unknown option name or a value of the wrong type.
        """
        hints = typing.get_type_hints(cls)
        known = {item.name for item in dataclasses.fields(cls)}
        values = {}
        for name, raw in options.items():
            key = name.replace("-", "_")
            if key not in known:
                choices = ", ".join(sorted(known)) or "(this game has no options)"
                raise ValueError(f"unknown option {name!r}; choose one of: {choices}")
            values[key] = _convert_option(key, raw, hints[key])
        config = cls(**values)
        config.validate()
        return config


def _convert_option(name: str, raw: Any, hint: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        arguments = [a for a in typing.get_args(hint) if a is not type(None)]
        if raw.lower() in ("none", "null", ""):
            return None
        hint = arguments[0]
    try:
        if hint is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint in (int, float, str):
            return hint(raw)
    except ValueError:
        raise ValueError(f"invalid value {raw!r} for option {name!r}: expected {hint.__name__}") from None
    return raw


class Game(ABC):
    """A vulnerability game: prompts, a vulnerable and a secure reward, and metrics.

    Subclasses set ``name``, ``config_class`` and ``score_overrides`` (the
    per-sample keys that ``loopholes score`` may pass, such as ``audited``),
    and implement :meth:`build_sample`, :meth:`score` and :meth:`set_metrics`.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    config_class: ClassVar[type[GameConfig]] = GameConfig
    score_overrides: ClassVar[tuple[str, ...]] = ()
    #: The set-level metric that is this game's exploit ratio. Most games use the
    #: share of exploiting samples; compliance uses the compliance gap, which no
    #: single sample can show, and names it here.
    exploit_metric: ClassVar[str] = "exploit_ratio"
    #: Completion length cap (tokens) that the CLI uses when none is given:
    #: long enough that the loophole and the intended task both fit.
    default_max_completion_tokens: ClassVar[int] = 96
    #: Columns that a reference-format parquet row must have for this game.
    required_columns: ClassVar[tuple[str, ...]] = ("prompt", "reward_model")

    def __init__(self, variant: str = "vulnerable", config: GameConfig | None = None, **options: Any):
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
        if config is not None and options:
            raise ValueError("pass either a config object or options, not both")
        self.variant = variant
        self.config = config if config is not None else self.config_class.from_options(options)

    @property
    def secure(self) -> bool:
        return self.variant == "secure"

    # -- data ---------------------------------------------------------------

    @abstractmethod
    def build_sample(self, row: Mapping[str, Any], index: int) -> Sample:
        """Turn one dataset row into a sample. Raise ValueError for a bad row."""

    def builtin_rows(self, split: str = "train") -> list[dict[str, Any]]:
        """Return the built-in dataset rows of this game for a split."""
        raise ValueError(f"game {self.name!r} has no built-in data")

    # -- scoring ------------------------------------------------------------

    @abstractmethod
    def score(self, sample: Sample, completion: str, *, seed: int = 0, draw: int = 0,
              overrides: Mapping[str, Any] | None = None) -> Outcome:
        """Score one completion. Must never raise for any completion text.

        Args:
            sample: The prompt's sample.
            completion: The policy's response text, verbatim.
            seed: The run's base seed; per-sample randomness derives from it.
            draw: The completion's position in its group.
            overrides: Per-sample values supplied from outside, restricted to
                ``score_overrides`` (for example a recorded audit draw).
        """

    def score_batch(self, samples: Sequence[Sample], completions: Sequence[str], *, seed: int = 0,
                    draws: Sequence[int] | None = None,
                    overrides: Sequence[Mapping[str, Any] | None] | None = None) -> list[Outcome]:
        """Score many completions; games with judges or sandboxes override this to batch."""
        draws = draws if draws is not None else [0] * len(samples)
        overrides = overrides if overrides is not None else [None] * len(samples)
        return [self.score(sample, completion, seed=seed, draw=draw, overrides=override)
                for sample, completion, draw, override in zip(samples, completions, draws, overrides)]

    def check_overrides(self, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
        """Return the overrides as a dict, raising ValueError for unknown keys."""
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(self.score_overrides))
        if unknown:
            allowed = ", ".join(self.score_overrides) or "none"
            raise ValueError(f"game {self.name!r} does not accept {unknown}; accepted overrides: {allowed}")
        return overrides

    # -- metrics ------------------------------------------------------------

    def set_metrics(self, outcomes: Sequence[Outcome]) -> dict[str, Any]:
        """Return the game's metrics over a whole set, beyond ITP, ER and reward.

        The default has none. See :mod:`loopholes.metrics` for the helpers.
        """
        return {}

    def expected_reward(self, outcome: Outcome) -> float | None:
        """Return the reward expected over the game's own randomness, or None.

        Self-grading overrides this: the sampled reward depends on one audit
        draw, so plots show the expectation under the audit probability too.
        """
        return None

    def describe(self) -> dict[str, Any]:
        """Return the resolved variant and options, for run configs."""
        return {"game": self.name, "variant": self.variant, "options": dataclasses.asdict(self.config)}


_REGISTRY: dict[str, type[Game]] = {}


def register_game(cls: type[Game]) -> type[Game]:
    """Register a game class under its ``name``; usable as a decorator."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"game name {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def game_names() -> list[str]:
    """Return the registered game names, in a stable order."""
    _load_builtin_games()
    return sorted(_REGISTRY)


def game_class(name: str) -> type[Game]:
    """Return the class of a registered game, raising ValueError for an unknown name."""
    _load_builtin_games()
    if name not in _REGISTRY:
        raise ValueError(f"unknown game {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def make_game(name: str, variant: str = "vulnerable", options: Mapping[str, Any] | None = None) -> Game:
    """Build a registered game with its variant and options.

    Raises:
        ValueError: for an unknown game, variant or option, or an invalid value.
    """
    return game_class(name)(variant=variant, **dict(options or {}))


def options_for_model(name: str, options: Mapping[str, Any] | None, model: str) -> dict[str, Any]:
    """Return a game's options with ``tokenizer`` set to the policy where the game measures tokens.

    Games that count tokens (the summary's length ratio) must count them in
    the policy's own tokenizer; an explicit ``tokenizer`` option is kept.
    """
    options = dict(options or {})
    fields = {item.name for item in dataclasses.fields(game_class(name).config_class)}
    if "tokenizer" in fields and "tokenizer" not in options:
        options["tokenizer"] = model
    return options


def _load_builtin_games() -> None:
    # Importing the modules runs their register_game lines.
    from loopholes import games  # noqa: F401
