"""Experiment configs: parsing, defaults, and bad input rejected with the key and value named."""

from pathlib import Path

import pytest

from loopholes.experiments import ConfigError, load_config, parse_config
from loopholes.experiments.plan import build_plan


def config(**changes):
    raw = {"name": "test", "games": ["self-grading", "summary"], "seeds": [0, 1],
           "training": {"steps": 4, "limit": 8, "prompts_per_step": 2}}
    raw.update(changes)
    return raw


BAD_CONFIGS = [
    ("unknown game", config(games=["self-grading", "tamper"]), "games: unknown game 'tamper'"),
    ("unknown top-level key", config(epochs=3), "epochs: unknown key"),
    ("unknown kind", config(kinds=["emergence", "grokking"]), "kinds: unknown kind 'grokking'"),
    ("empty seeds", config(seeds=[]), "seeds: give a non-empty list"),
    ("repeated seed", config(seeds=[1, 1]), "seeds: each seed must appear once"),
    ("bad game option", config(games={"self-grading": {"options": {"audit_probability": 2}}}),
     "games.self-grading.options"),
    ("unknown game option", config(games={"self-grading": {"options": {"audit_rate": 0.1}}}),
     "games.self-grading.options: unknown option 'audit_rate'"),
    ("unknown training key", config(training={"stepz": 3}), "training.stepz: unknown key"),
    ("reserved training key", config(training={"steps": 2, "variant": "secure"}), "training.variant: set by the experiment"),
    ("zero steps", config(training={"steps": 0}), "training: steps must be at least 1, got 0"),
    ("limit below prompts per step", config(training={"steps": 2, "limit": 1, "prompts_per_step": 2}),
     "training.limit: 1 training prompts are fewer than prompts_per_step=2"),
    ("per-game override checked",
     config(games={"summary": {"training": {"group_size": 1}}}), "games.summary.training: group_size must be at least 2"),
    ("evaluation items zero", config(evaluation={"items": 0}), "evaluation.items: must be an integer of at least 1"),
    ("evaluation top_p", config(evaluation={"top_p": 1.5}), "evaluation: top_p must lie in (0, 1], got 1.5"),
    ("threshold out of range", config(thresholds={"emergence": 1.5}), "thresholds.emergence: must be a number in [-1, 1]"),
    ("smoothing longer than run", config(smoothing=9), "smoothing: a window of 9 steps is longer than the 4"),
    ("catalysis pair with unknown game", config(catalysis={"pairs": [["self-grading", "compliance"]]}),
     "catalysis.pairs: game 'compliance' is not in games"),
    ("catalysis pair with itself", config(catalysis={"pairs": [["summary", "summary"]]}),
     "catalysis.pairs: source and target must differ"),
    ("catalysis with one game", config(games=["summary"], kinds=["catalysis"]), "catalysis: needs at least two games"),
    ("unknown filter", config(distillation={"filter": "best"}), "distillation.filter: unknown filter 'best'"),
    ("unknown sft key", config(distillation={"sft": {"epochz": 1}}), "distillation.sft.epochz: unknown key"),
    ("invalid sft value", config(distillation={"sft": {"batch_size": 0}}), "distillation.sft: batch_size must be at least 1"),
    ("unknown persistence start", config(persistence={"starts": ["rl", "dpo"]}), "persistence.starts"),
    ("lora with chained training", config(training={"steps": 2, "lora": True}), "training.lora: true"),
    ("checkpoint for unknown game", config(kinds=["transfer"], checkpoints={"compliance": "/tmp"}),
     "checkpoints.compliance: game 'compliance' is not in games"),
    ("missing checkpoint", config(kinds=["transfer"], checkpoints={"summary": "/no/such/run"}),
     "checkpoints.summary: checkpoint not found: '/no/such/run'"),
    ("checkpoints per seed mismatch", config(kinds=["transfer"], checkpoints={"summary": ["/tmp", "/tmp", "/tmp"]}),
     "checkpoints.summary: 3 paths for 2 seeds"),
    ("checkpoint with emergence", config(kinds=["emergence"], checkpoints={"summary": "/tmp"}),
     "checkpoints.summary: emergence trains this game's exploiter itself"),
]


@pytest.mark.parametrize("raw, message", [(raw, message) for _, raw, message in BAD_CONFIGS],
                         ids=[case for case, _, _ in BAD_CONFIGS])
def test_bad_config_rejected(raw, message):
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    assert message in str(error.value)


def test_defaults_and_overrides():
    parsed = parse_config(config(games={"self-grading": {"options": {"audit_probability": 0.2}},
                                        "summary": {"training": {"max_completion_tokens": 200},
                                                    "evaluation": {"items": 5},
                                                    "thresholds": {"emergence": 0.3}}},
                                 evaluation={"items": 10, "samples_per_item": 2}))
    assert parsed.kinds == ["emergence", "transfer", "catalysis", "distillation", "persistence"]
    assert parsed.model == "embedded"

    train = parsed.train_config("summary", "secure", 1, "some-model")
    assert (train.game, train.variant, train.seed, train.model) == ("summary", "secure", 1, "some-model")
    assert train.max_completion_tokens == 200
    assert train.steps == 4
    assert parsed.train_config("self-grading", "vulnerable", 0, "m").options == {"audit_probability": 0.2}

    assert parsed.eval_config("summary", 0, "m").limit == 5
    assert parsed.eval_config("self-grading", 0, "m").limit == 10
    assert parsed.eval_config("self-grading", 0, "m").samples_per_item == 2
    assert parsed.threshold("summary", "emergence") == 0.3
    assert parsed.threshold("self-grading", "emergence") == 0.5
    assert parsed.catalysis_pairs() == [("self-grading", "summary"), ("summary", "self-grading")]


def test_load_config_from_yaml(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("games: [summary]\nkinds: emergence\nseeds: 3\ntraining: {steps: 2}\n")
    parsed = load_config(path)
    assert parsed.name == "study"
    assert parsed.kinds == ["emergence"]
    assert parsed.seeds == [3]


@pytest.mark.parametrize("text, message", [
    ("games: [summary\n", "is not valid YAML"),
    ("- summary\n", "must hold a mapping"),
    ("name: x\n", "games: missing"),
], ids=["invalid yaml", "list at top level", "no games"])
def test_bad_yaml_rejected(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_file_rejected(tmp_path):
    with pytest.raises(ConfigError, match="experiment config not found"):
        load_config(tmp_path / "absent.yaml")


def test_plan_shares_runs_between_kinds():
    plan = build_plan(parse_config(config(seeds=[0])))
    keys = list(plan.parts)
    assert len(keys) == len(set(keys))
    # Transfer, catalysis, distillation and persistence reuse emergence's exploiter.
    assert keys.count("runs/self-grading-vulnerable-seed0") == 1
    assert "runs/summary-vulnerable-from-rl-self-grading-seed0" in keys
    assert "runs/summary-secure-from-sft-summary-seed0" in keys
    assert "runs/summary-secure-from-rl-summary-seed0" in keys
    assert "distillation/summary-seed0" in keys
    assert "evals/self-grading-vulnerable-seed0/summary" in keys
    # Every dependency comes before the part that needs it.
    position = {key: index for index, key in enumerate(keys)}
    for part in plan.parts.values():
        for need in part.needs:
            assert position[need] < position[part.key], (need, part.key)


def test_plan_marks_changed_steps_in_folder_name():
    plan = build_plan(parse_config(config(seeds=[0], kinds=["persistence"], persistence={"steps": 7})))
    assert "runs/summary-secure-from-rl-summary-steps7-seed0" in plan.parts
    assert "runs/summary-vulnerable-seed0" in plan.parts


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parent.parent.glob("configs/experiments/*.yaml")),
                         ids=lambda path: path.name)
def test_shipped_configs_are_valid(path):
    parsed = load_config(path)
    assert parsed.games
    assert build_plan(parsed).parts


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parent.parent.glob("configs/experiments/cpu-*.yaml")),
                         ids=lambda path: path.name)
def test_shipped_cpu_configs_fit_their_data(path, tmp_path):
    from loopholes.experiments.runner import Runner

    Runner(load_config(path), tmp_path / "experiment").check()
    assert not (tmp_path / "experiment").exists()
