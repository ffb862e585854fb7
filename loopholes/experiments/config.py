"""Experiment configs: a YAML file that describes one study, checked before any training.

A config names the games, the model, the seeds, the training and evaluation
sizes, and the research questions (``kinds``) to answer. The sections map onto
:class:`loopholes.train.grpo.TrainConfig`, :class:`loopholes.evaluate.EvalConfig`
and :class:`loopholes.train.sft.SFTTrainConfig`; docs/experiments.md lists every key.

:func:`load_config` reads and validates the file. Every error names the key
and the value, for example ``games.tampering.training.steps: steps must be at
least 1, got 0``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopholes.evaluate import EvalConfig
from loopholes.train.grpo import TrainConfig
from loopholes.train.sft import SFTTrainConfig

KINDS = ("emergence", "transfer", "catalysis", "distillation", "persistence")
FILTERS = ("exploits", "reward_above")
PERSISTENCE_STARTS = ("rl", "sft", "base")

# Keys the experiment sets per run; a config may not set them in a section.
TRAIN_RESERVED = ("game", "variant", "model", "seed", "options", "data", "split")
EVAL_RESERVED = ("game", "variant", "model", "seed", "options", "data", "split", "limit")
SFT_RESERVED = ("dataset", "split", "model", "seed")


class ConfigError(ValueError):
    """An experiment config is invalid; the message names the key and the value."""


@dataclass
class GameEntry:
    """One game of an experiment: its options, data source and per-game overrides."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    data: str = "builtin"
    train_split: str = "train"
    test_split: str = "test"
    training: dict[str, Any] = field(default_factory=dict)     # overrides of the training section
    evaluation: dict[str, Any] = field(default_factory=dict)   # overrides of the evaluation section
    thresholds: dict[str, float] = field(default_factory=dict)  # overrides of the thresholds section


@dataclass
class Thresholds:
    """ER levels that the analyses compare curves against."""

    emergence: float = 0.5     # ER at or above this counts as emerged (emergence, catalysis)
    persistence: float = 0.1   # ER below this counts as removed (persistence)


@dataclass
class BlindSpot:
    """Rule of the blind-spot flag; changes are last-quarter mean minus first-quarter mean."""

    min_er_rise: float = 0.1
    min_itp_rise: float = 0.0


@dataclass
class Catalysis:
    """Settings of catalysis: the (source, target) pairs to train and their length."""

    pairs: list[tuple[str, str]] | None = None   # None: every ordered pair of different games
    steps: int | None = None                     # None: the training section's steps


@dataclass
class Distillation:
    """Settings of distillation: teacher sampling, the rollout filter and the student's fine-tuning."""

    prompts: int | None = None            # training prompts sampled; None: the training limit (or all)
    samples_per_prompt: int = 4
    temperature: float = 0.7
    top_p: float = 1.0
    max_completion_tokens: int | None = None  # None: the training section's value
    batch_size: int = 16
    filter: str = "exploits"              # exploits | reward_above
    reward_threshold: float = 1.0         # reward_above keeps rollouts with reward >= this
    student: str | None = None            # None: the experiment's model
    sft: dict[str, Any] = field(default_factory=dict)  # SFTTrainConfig fields


@dataclass
class Persistence:
    """Settings of persistence: the starts of secure-reward training to compare and their length."""

    starts: list[str] = field(default_factory=lambda: list(PERSISTENCE_STARTS))
    steps: int | None = None              # None: the training section's steps


@dataclass
class ExperimentConfig:
    """A whole experiment, as read from YAML and validated."""

    name: str
    games: dict[str, GameEntry]
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    model: str = "embedded"
    seeds: list[int] = field(default_factory=lambda: [0])
    output: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    thresholds: Thresholds = field(default_factory=Thresholds)
    smoothing: int = 1                    # trailing moving-average window (steps) before threshold tests
    blind_spot: BlindSpot = field(default_factory=BlindSpot)
    catalysis: Catalysis = field(default_factory=Catalysis)
    distillation: Distillation = field(default_factory=Distillation)
    persistence: Persistence = field(default_factory=Persistence)
    checkpoints: dict[str, list[str]] = field(default_factory=dict)  # game -> exploiter per seed

    # -- per-run settings ---------------------------------------------------------

    def train_config(self, game: str, variant: str, seed: int, model: str, steps: int | None = None) -> TrainConfig:
        """Return the GRPO settings of one run; ``model`` is a loadable path or name."""
        entry = self.games[game]
        settings = {**self.training, **entry.training}
        if steps is not None:
            settings["steps"] = steps
        return TrainConfig(game=game, variant=variant, options=dict(entry.options), data=entry.data,
                           split=entry.train_split, model=model, seed=seed, **settings)

    def eval_config(self, game: str, seed: int, model: str) -> EvalConfig:
        """Return the evaluation settings on a game's test split."""
        entry = self.games[game]
        settings = {**self.evaluation, **entry.evaluation}
        limit = settings.pop("items", None)
        return EvalConfig(game=game, variant="vulnerable", options=dict(entry.options), data=entry.data,
                          split=entry.test_split, limit=limit, model=model, seed=seed, **settings)

    def sft_config(self, dataset: Path, seed: int, model: str) -> SFTTrainConfig:
        """Return the student's SFT settings."""
        return SFTTrainConfig(dataset=str(dataset), model=model, seed=seed, **self.distillation.sft)

    def threshold(self, game: str, name: str) -> float:
        """Return a threshold of a game: its override, or the experiment-wide value."""
        return float(self.games[game].thresholds.get(name, getattr(self.thresholds, name)))

    def steps(self, game: str, kind: str | None = None) -> int:
        """Return the number of GRPO steps of a game's runs for a kind (its override, if any)."""
        override = getattr(getattr(self, kind), "steps", None) if kind else None
        return override if override is not None else self.train_config(game, "vulnerable", 0, "").steps

    def catalysis_pairs(self) -> list[tuple[str, str]]:
        if self.catalysis.pairs is not None:
            return list(self.catalysis.pairs)
        return [(source, target) for source in self.games for target in self.games if source != target]

    def to_dict(self) -> dict[str, Any]:
        """Return the resolved config as JSON-ready data (the form stored in the experiment folder)."""
        return dataclasses.asdict(self)


# -- loading ----------------------------------------------------------------------


def load_config(path: Path | str) -> ExperimentConfig:
    """Read an experiment config from YAML and validate it.

    Raises:
        ConfigError: for a missing file, invalid YAML, an unknown key or an invalid value.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path} must hold a mapping of keys (name, games, ...), got {type(raw).__name__}")
    raw = dict(raw)
    raw.setdefault("name", path.stem)
    return parse_config(raw)


def parse_config(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate a config from a mapping (parsed YAML)."""
    raw = dict(raw)
    _check_keys("", raw, {f.name for f in dataclasses.fields(ExperimentConfig)})
    if "games" not in raw:
        raise ConfigError("games: missing; list the games to play, for example games: [self-grading]")
    if "name" not in raw or not isinstance(raw["name"], str) or not raw["name"].strip():
        raise ConfigError(f"name: must be a non-empty string, got {raw.get('name')!r}")

    config = ExperimentConfig(
        name=raw["name"],
        games=_parse_games(raw["games"]),
        kinds=_parse_kinds(raw.get("kinds", list(KINDS))),
        model=_string("model", raw.get("model", "embedded")),
        seeds=_parse_seeds(raw.get("seeds", [0])),
        output=None if raw.get("output") is None else _string("output", raw["output"]),
        training=_mapping("training", raw.get("training", {})),
        evaluation=_mapping("evaluation", raw.get("evaluation", {})),
        thresholds=_section("thresholds", Thresholds, raw.get("thresholds", {})),
        smoothing=raw.get("smoothing", 1),
        blind_spot=_section("blind_spot", BlindSpot, raw.get("blind_spot", {})),
        catalysis=_parse_catalysis(raw.get("catalysis", {})),
        distillation=_section("distillation", Distillation, raw.get("distillation", {})),
        persistence=_section("persistence", Persistence, raw.get("persistence", {})),
        checkpoints=_parse_checkpoints(raw.get("checkpoints", {})),
    )
    validate(config)
    return config


def _check_keys(prefix: str, mapping: Mapping[str, Any], known: set[str]) -> None:
    for key in mapping:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{where}: unknown key; choose one of: {', '.join(sorted(known))}")


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}: must be a non-empty string, got {value!r}")
    return value


def _mapping(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: must be a mapping of settings, got {value!r}")
    return dict(value)


def _section(key: str, cls: type, value: Any):
    values = _mapping(key, value)
    _check_keys(key, values, {f.name for f in dataclasses.fields(cls)})
    return cls(**values)


def _parse_games(value: Any) -> dict[str, GameEntry]:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        value = {name: {} for name in value}
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"games: give a non-empty list of game names or a mapping of name to settings, got {value!r}")
    known = {f.name for f in dataclasses.fields(GameEntry)} - {"name"}
    games = {}
    for name, settings in value.items():
        settings = _mapping(f"games.{name}", settings)
        _check_keys(f"games.{name}", settings, known)
        for key in ("options", "training", "evaluation", "thresholds"):
            settings[key] = _mapping(f"games.{name}.{key}", settings.get(key, {}))
        games[str(name)] = GameEntry(name=str(name), **settings)
    return games


def _parse_kinds(value: Any) -> list[str]:
    kinds = [value] if isinstance(value, str) else value
    if not isinstance(kinds, list) or not kinds:
        raise ConfigError(f"kinds: give a non-empty list of: {', '.join(KINDS)}; got {value!r}")
    for kind in kinds:
        if kind not in KINDS:
            raise ConfigError(f"kinds: unknown kind {kind!r}; choose from: {', '.join(KINDS)}")
    return [kind for kind in KINDS if kind in kinds]


def _parse_seeds(value: Any) -> list[int]:
    seeds = [value] if isinstance(value, int) else value
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds)):
        raise ConfigError(f"seeds: give a non-empty list of integers, got {value!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: each seed must appear once, got {seeds}")
    return list(seeds)


def _parse_catalysis(value: Any) -> Catalysis:
    values = _mapping("catalysis", value)
    _check_keys("catalysis", values, {"pairs", "steps"})
    pairs = values.get("pairs")
    if pairs is None or pairs == "all":
        parsed = None
    elif isinstance(pairs, list) and all(isinstance(p, list | tuple) and len(p) == 2 for p in pairs):
        parsed = [(str(source), str(target)) for source, target in pairs]
    else:
        raise ConfigError(f"catalysis.pairs: give 'all' or a list of [source, target] game pairs, got {pairs!r}")
    return Catalysis(pairs=parsed, steps=values.get("steps"))


def _parse_checkpoints(value: Any) -> dict[str, list[str]]:
    values = _mapping("checkpoints", value)
    parsed = {}
    for game, paths in values.items():
        paths = [paths] if isinstance(paths, str) else paths
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise ConfigError(f"checkpoints.{game}: give a path, or a list of paths with one per seed, got {paths!r}")
        parsed[str(game)] = list(paths)
    return parsed


# -- validation -------------------------------------------------------------------


def validate(config: ExperimentConfig) -> None:
    """Check every setting that can be checked without data or models.

    Raises:
        ConfigError: naming the key and the value of the first invalid setting.
    """
    from loopholes.games import game_names, make_game

    names = game_names()
    for name, entry in config.games.items():
        if name not in names:
            raise ConfigError(f"games: unknown game {name!r}; choose one of: {', '.join(names)}")
        with _prefixed(f"games.{name}.options"):
            make_game(name, "vulnerable", entry.options)

    _check_reserved("training", config.training, TRAIN_RESERVED)
    _check_reserved("evaluation", config.evaluation, EVAL_RESERVED)
    _check_reserved("distillation.sft", config.distillation.sft, SFT_RESERVED)
    for name, entry in config.games.items():
        _check_reserved(f"games.{name}.training", entry.training, TRAIN_RESERVED)
        _check_reserved(f"games.{name}.evaluation", entry.evaluation, EVAL_RESERVED)
        _check_keys(f"games.{name}.thresholds", entry.thresholds, {f.name for f in dataclasses.fields(Thresholds)})
        _check_run_settings(config, name)

    _check_numbers(config)
    _check_kinds(config)
    _check_checkpoints(config)


class _prefixed:
    """Re-raise a ValueError inside the block as a ConfigError that starts with the key."""

    def __init__(self, key: str):
        self.key = key

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is not None and issubclass(kind, ValueError) and not isinstance(error, ConfigError):
            raise ConfigError(f"{self.key}: {error}") from error
        return False


def _check_reserved(key: str, settings: Mapping[str, Any], reserved: tuple[str, ...]) -> None:
    for name in settings:
        if name in reserved:
            raise ConfigError(f"{key}.{name}: set by the experiment for each run; remove it "
                              f"(the experiment sets: {', '.join(reserved)})")


def _check_run_settings(config: ExperimentConfig, game: str) -> None:
    entry = config.games[game]
    training_key = f"games.{game}.training" if entry.training else "training"
    known_training = {f.name for f in dataclasses.fields(TrainConfig)}
    for source, settings in (("training", config.training), (f"games.{game}.training", entry.training)):
        _check_keys(source, settings, known_training)
    with _prefixed(training_key):
        try:
            train = config.train_config(game, "vulnerable", config.seeds[0], config.model)
        except TypeError as error:
            raise ConfigError(str(error)) from error
        train.validate()
    for kind in ("catalysis", "persistence"):
        steps = getattr(config, kind).steps
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise ConfigError(f"{kind}.steps: must be an integer of at least 1, got {steps!r}")
    if train.limit is not None and train.limit < train.prompts_per_step:
        raise ConfigError(f"{training_key}.limit: {train.limit} training prompts are fewer than "
                          f"prompts_per_step={train.prompts_per_step}; raise limit or lower prompts_per_step")

    known_eval = {f.name for f in dataclasses.fields(EvalConfig)} | {"items"}
    evaluation_key = f"games.{game}.evaluation" if entry.evaluation else "evaluation"
    for source, settings in (("evaluation", config.evaluation), (f"games.{game}.evaluation", entry.evaluation)):
        _check_keys(source, settings, known_eval)
    with _prefixed(evaluation_key):
        evaluation = config.eval_config(game, config.seeds[0], config.model)
        evaluation.validate()
    if evaluation.limit is not None and (not isinstance(evaluation.limit, int) or evaluation.limit < 1):
        raise ConfigError(f"{evaluation_key}.items: must be an integer of at least 1 or null (all), "
                          f"got {evaluation.limit!r}")


def _check_numbers(config: ExperimentConfig) -> None:
    for name in ("emergence", "persistence"):
        value = getattr(config.thresholds, name)
        _check_threshold(f"thresholds.{name}", value)
    for game, entry in config.games.items():
        for name, value in entry.thresholds.items():
            _check_threshold(f"games.{game}.thresholds.{name}", value)
    if not isinstance(config.smoothing, int) or config.smoothing < 1:
        raise ConfigError(f"smoothing: must be an integer of at least 1 (steps), got {config.smoothing!r}")
    for game in config.games:
        if config.smoothing > config.steps(game):
            raise ConfigError(f"smoothing: a window of {config.smoothing} steps is longer than the "
                              f"{config.steps(game)} training steps of {game!r}")
    for name in ("min_er_rise", "min_itp_rise"):
        value = getattr(config.blind_spot, name)
        if not isinstance(value, int | float) or not -1 <= value <= 1:
            raise ConfigError(f"blind_spot.{name}: must be a number in [-1, 1], got {value!r}")

    distillation = config.distillation
    for name in ("samples_per_prompt", "batch_size"):
        value = getattr(distillation, name)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"distillation.{name}: must be an integer of at least 1, got {value!r}")
    for name in ("prompts", "max_completion_tokens"):
        value = getattr(distillation, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"distillation.{name}: must be an integer of at least 1 or null, got {value!r}")
    if not isinstance(distillation.temperature, int | float) or not 0 < distillation.temperature <= 5:
        raise ConfigError(f"distillation.temperature: must lie in (0, 5], got {distillation.temperature!r}")
    if not isinstance(distillation.top_p, int | float) or not 0 < distillation.top_p <= 1:
        raise ConfigError(f"distillation.top_p: must lie in (0, 1], got {distillation.top_p!r}")
    if distillation.filter not in FILTERS:
        raise ConfigError(f"distillation.filter: unknown filter {distillation.filter!r}; choose one of: "
                          f"{', '.join(FILTERS)}")
    if not isinstance(distillation.reward_threshold, int | float) or not math.isfinite(distillation.reward_threshold):
        raise ConfigError(f"distillation.reward_threshold: must be a finite number, got "
                          f"{distillation.reward_threshold!r}")
    _check_keys("distillation.sft", distillation.sft, {f.name for f in dataclasses.fields(SFTTrainConfig)})
    with _prefixed("distillation.sft"):
        config.sft_config(Path("dataset.jsonl"), config.seeds[0], config.model).validate()


def _check_threshold(key: str, value: Any) -> None:
    # Exploit ratios lie in [0, 1]; a compliance gap lies in [-1, 1].
    if not isinstance(value, int | float) or isinstance(value, bool) or not -1 <= value <= 1:
        raise ConfigError(f"{key}: must be a number in [-1, 1], got {value!r}")


def _check_kinds(config: ExperimentConfig) -> None:
    if "catalysis" in config.kinds:
        if len(config.games) < 2 and config.catalysis.pairs is None:
            raise ConfigError(f"catalysis: needs at least two games, got {list(config.games)}")
        for source, target in config.catalysis_pairs():
            for game in (source, target):
                if game not in config.games:
                    raise ConfigError(f"catalysis.pairs: game {game!r} is not in games ({', '.join(config.games)})")
            if source == target:
                raise ConfigError(f"catalysis.pairs: source and target must differ, got [{source}, {target}]")
    if "persistence" in config.kinds:
        starts = config.persistence.starts
        if not isinstance(starts, list) or not starts or any(start not in PERSISTENCE_STARTS for start in starts):
            raise ConfigError(f"persistence.starts: give a non-empty list of: {', '.join(PERSISTENCE_STARTS)}; "
                              f"got {starts!r}")
    chains = [kind for kind in ("catalysis", "persistence") if kind in config.kinds]
    lora_games = [game for game in config.games if config.train_config(game, "vulnerable", 0, "").lora]
    # NOTE: GRPO from a LoRA run's saved adapter is untested, so chained training
    # (a second GRPO run that starts from a trained model) requires full fine-tuning.
    if chains and lora_games:
        raise ConfigError(f"training.lora: true for {lora_games}, but {chains} start GRPO from trained models, "
                          "which needs full fine-tuning; set lora: false or drop those kinds")
    if "persistence" in config.kinds and "sft" in config.persistence.starts and config.distillation.sft.get("lora"):
        raise ConfigError("distillation.sft.lora: true, but persistence starts GRPO from the SFT student, "
                          "which needs full fine-tuning; set lora: false or drop 'sft' from persistence.starts")


def _check_checkpoints(config: ExperimentConfig) -> None:
    for game, paths in config.checkpoints.items():
        if game not in config.games:
            raise ConfigError(f"checkpoints.{game}: game {game!r} is not in games ({', '.join(config.games)})")
        if len(paths) not in (1, len(config.seeds)):
            raise ConfigError(f"checkpoints.{game}: {len(paths)} paths for {len(config.seeds)} seeds "
                              f"{config.seeds}; give one path, or one per seed")
        if "emergence" in config.kinds:
            raise ConfigError(f"checkpoints.{game}: emergence trains this game's exploiter itself; drop the "
                              "checkpoint or drop emergence from kinds")
        for path in paths:
            if not Path(path).expanduser().exists():
                raise ConfigError(f"checkpoints.{game}: checkpoint not found: {path!r}")


def checkpoint_for(config: ExperimentConfig, game: str, seed: int) -> str | None:
    """Return the given exploiter checkpoint of a game for a seed, or None where the experiment trains it."""
    paths = config.checkpoints.get(game)
    if not paths:
        return None
    return paths[0] if len(paths) == 1 else paths[config.seeds.index(seed)]
