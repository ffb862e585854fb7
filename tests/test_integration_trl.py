"""TRL integration: the public reward function in GRPOTrainer, GRPO overrides for vLLM, accelerate configs.

Everything here runs the real libraries: TRL's GRPOTrainer for one step on a
tiny random model, TRL's GRPOConfig, and accelerate's own config loader,
launch-environment builder and FSDP / DeepSpeed plugins.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

from loopholes.integrations.launch import grpo_overrides, load_accelerate_config, parse_grpo_options, vllm_overrides
from loopholes.integrations.trl import build_dataset, reward_function, step_scalars

REPOSITORY = Path(__file__).resolve().parent.parent
ACCELERATE_CONFIGS = REPOSITORY / "configs" / "accelerate"


def cpu_grpo_config(output_dir: Path, **fields):
    from trl import GRPOConfig

    settings = {"use_cpu": True, "bf16": False, "activation_checkpointing": False, "report_to": [], **fields}
    return GRPOConfig(output_dir=str(output_dir), **settings)


# -- the reward function inside TRL's own GRPOTrainer ---------------------------------------


def test_reward_function_logs_itp_and_er_in_grpo_trainer(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    game, dataset = build_dataset("self-grading", "builtin", "train", limit=4)
    batches = []
    reward = reward_function(game, dataset_samples=dataset.samples, seed=3,
                             on_outcomes=lambda step, samples, texts, outcomes: batches.append(outcomes))
    args = cpu_grpo_config(tmp_path, max_steps=1, per_device_train_batch_size=4, num_generations=4,
                           max_completion_length=8, logging_steps=1, save_strategy="no", seed=0)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), reward_funcs=[reward],
                          args=args, train_dataset=dataset.hf,
                          processing_class=AutoTokenizer.from_pretrained(tiny_model_dir))
    trainer.train()

    logged = next(entry for entry in trainer.state.log_history if "loopholes/intended_task_performance" in entry)
    (outcomes,) = batches
    expected = step_scalars(game, outcomes)
    assert len(outcomes) == 4
    assert logged["loopholes/intended_task_performance"] == pytest.approx(expected["intended_task_performance"])
    assert logged["loopholes/exploit_ratio"] == pytest.approx(expected["exploit_ratio"])
    assert logged["loopholes/format_error_rate"] == pytest.approx(expected["format_error_rate"])
    assert logged["rewards/self-grading_vulnerable/mean"] == pytest.approx(
        sum(o.reward for o in outcomes) / len(outcomes))


def test_reward_function_needs_sample_index():
    game, dataset = build_dataset("self-grading", "builtin", "train", limit=2)
    reward = reward_function(game, dataset_samples=dataset.samples)
    with pytest.raises(ValueError, match="sample_index"):
        reward(prompts=["q"], completions=["a"])


# -- vLLM and other GRPOConfig overrides -----------------------------------------------------

OVERRIDE_CASES = [
    # (vllm mode, server URL, --grpo-option pairs, keyword settings, expected GRPOConfig fields)
    ("colocate", None, [], {}, {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3}),
    ("colocate", None, [], {"vllm_gpu_memory_utilization": 0.5, "vllm_tensor_parallel_size": 2},
     {"use_vllm": True, "vllm_gpu_memory_utilization": 0.5, "vllm_tensor_parallel_size": 2}),
    ("server", "http://10.0.0.5:8000/", ["vllm_server_timeout=600"], {},
     {"use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": "http://10.0.0.5:8000",
      "vllm_server_timeout": 600.0}),
    (None, None, ["report_to=[tensorboard, wandb]", "run_name=123", "save_total_limit=5"], {},
     {"use_vllm": False, "report_to": ["tensorboard", "wandb"], "run_name": "123", "save_total_limit": 5}),
    (None, None, ["ds3_gather_for_generation=false", "optim=adamw_torch_fused", "hub_model_id=null"], {},
     {"ds3_gather_for_generation": False, "optim": "adamw_torch_fused", "hub_model_id": None}),
]


@pytest.mark.parametrize(("mode", "url", "pairs", "settings", "expected"), OVERRIDE_CASES)
def test_overrides_reach_grpo_config(tmp_path, mode, url, pairs, settings, expected):
    config = cpu_grpo_config(tmp_path, **grpo_overrides(mode, url, pairs, **settings))
    for field, value in expected.items():
        assert getattr(config, field) == value, field


@pytest.mark.parametrize(("call", "message"), [
    (lambda: vllm_overrides("server"), "needs --vllm-server-url"),
    (lambda: vllm_overrides("server", "10.0.0.5:8000"), "invalid vLLM server URL"),
    (lambda: vllm_overrides("colocate", "http://10.0.0.5:8000"), "only used in server mode"),
    (lambda: vllm_overrides("server", "http://h:1", gpu_memory_utilization=0.5), "trl vllm-serve"),
    (lambda: vllm_overrides("colocate", gpu_memory_utilization=1.5), "in \\(0, 1\\]"),
    (lambda: vllm_overrides("spmd"), "unknown vLLM mode"),
    (lambda: vllm_overrides(None, "http://h:1"), "without --vllm-mode"),
    (lambda: parse_grpo_options(["num_generations=4"]), "--group-size"),
    (lambda: parse_grpo_options(["gradient_accumulation_steps=4"]), "one metric record per batch"),
    (lambda: parse_grpo_options(["vllm_server_timout=4"]), "did you mean vllm_server_timeout"),
    (lambda: parse_grpo_options(["bf16"]), "KEY=VALUE"),
    (lambda: parse_grpo_options(["bf16=true", "bf16=false"]), "given twice"),
    (lambda: grpo_overrides("colocate", None, ["use_vllm=true"]), "repeat the vLLM settings"),
])
def test_bad_overrides_are_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_train_config_overrides_reach_trainer(tmp_path, tiny_model_dir):
    """TrainConfig.grpo_overrides, as `loopholes train` passes them, end in the trainer's GRPOConfig."""
    from loopholes.data import load_samples
    from loopholes.games import make_game
    from loopholes.models import load_tokenizer
    from loopholes.train.grpo import TrainConfig, _build_trainer

    overrides = grpo_overrides(None, None, ["save_total_limit=5", "vllm_server_timeout=600", "warmup_steps=2"])
    config = TrainConfig(game="self-grading", model=str(tiny_model_dir), steps=1, group_size=2,
                         dtype="float32", device="cpu", grpo_overrides=overrides)
    game = make_game("self-grading")
    samples = load_samples(game, "builtin", "train", limit=2)
    trainer, _ = _build_trainer(config, game, samples, str(tiny_model_dir), load_tokenizer(str(tiny_model_dir)),
                                tmp_path)

    assert trainer.args.save_total_limit == 5
    assert trainer.args.vllm_server_timeout == 600
    assert trainer.args.warmup_steps == 2
    assert trainer.args.num_generations == 2


# -- accelerate configs ----------------------------------------------------------------------


def launch_environment(config_file: Path) -> dict[str, str]:
    """Return the environment `accelerate launch --config_file FILE` gives the training processes."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    arguments = launch_command_parser().parse_args(["--config_file", str(config_file), "-m", "loopholes", "train"])
    arguments, defaults, precision_from_config = _validate_launch_command(arguments)
    if arguments.use_deepspeed:
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if precision_from_config else [])
        arguments.deepspeed_fields_from_accelerate_config = ",".join(fields)
        return prepare_deepspeed_cmd_env(arguments)[1]
    return prepare_multi_gpu_env(arguments)


@pytest.mark.parametrize(("name", "kind", "processes"), [
    ("ddp.yaml", "MULTI_GPU", 8),
    ("deepspeed_zero3.yaml", "DEEPSPEED", 8),
    ("fsdp.yaml", "FSDP", 8),
    ("multinode_zero3.yaml", "DEEPSPEED", 16),
])
def test_shipped_accelerate_configs_load(name, kind, processes):
    config = load_accelerate_config(ACCELERATE_CONFIGS / name)
    assert config.distributed_type.value == kind
    assert config.num_processes == processes
    assert config.mixed_precision == "bf16"


def test_ddp_config_launch_environment():
    environment = launch_environment(ACCELERATE_CONFIGS / "ddp.yaml")
    assert environment["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert "ACCELERATE_USE_FSDP" not in environment
    assert "ACCELERATE_USE_DEEPSPEED" not in environment


def test_fsdp_config_builds_fsdp_plugin():
    from accelerate.utils import FullyShardedDataParallelPlugin

    with mock.patch.dict(os.environ, launch_environment(ACCELERATE_CONFIGS / "fsdp.yaml")):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.reshard_after_forward is True


@pytest.mark.parametrize("name", ["deepspeed_zero3.yaml", "multinode_zero3.yaml"])
def test_zero3_config_builds_deepspeed_plugin(name):
    from accelerate.utils import DeepSpeedPlugin

    with mock.patch.dict(os.environ, launch_environment(ACCELERATE_CONFIGS / name)):
        plugin = DeepSpeedPlugin()
    zero = plugin.deepspeed_config["zero_optimization"]
    assert plugin.zero_stage == 3
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["offload_param"]["device"] == "none"


@pytest.mark.parametrize(("change", "message"), [
    ({"distributed_type": "XLA"}, "supports"),
    ({"deepspeed_config": {"zero_stage": 4}}, "zero_stage 4"),
    ({"compute_environment": "LOCAL_MACHINE", "no_such_key": 1}, "unknown keys"),
])
def test_bad_accelerate_config_is_rejected(tmp_path, change, message):
    config = yaml.safe_load((ACCELERATE_CONFIGS / "deepspeed_zero3.yaml").read_text())
    config.update(change)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=message):
        load_accelerate_config(path)


def test_missing_accelerate_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_accelerate_config(tmp_path / "none.yaml")


# -- the launch path --------------------------------------------------------------------------


def test_python_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "loopholes", "train", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--output" in result.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_accelerate_launch_two_processes(tmp_path, tiny_model_dir):
    """`accelerate launch --config_file ddp.yaml -m loopholes train` with two CPU processes (gloo).

    The shipped DDP config with use_cpu, two processes and no mixed
    precision; each process scores its own prompt and the run directory must
    hold one metric record per step over both processes' completions.
    """
    config = yaml.safe_load((ACCELERATE_CONFIGS / "ddp.yaml").read_text())
    config.update(use_cpu=True, num_processes=2, mixed_precision="no", main_process_port=free_port())
    config_file = tmp_path / "cpu-ddp.yaml"
    config_file.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    # The accelerate script of this interpreter's environment: CI runs pytest without activating it.
    launcher = Path(sys.executable).with_name("accelerate")
    command = [str(launcher) if launcher.is_file() else shutil.which("accelerate") or "accelerate",
               "launch", "--config_file", str(config_file),
               "-m", "loopholes", "train", "self-grading", "--output", str(run_dir), "--model", str(tiny_model_dir),
               "--steps", "2", "--prompts-per-step", "1", "--group-size", "2", "--max-completion-tokens", "8",
               "--limit", "4", "--dtype", "float32"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    completions = (run_dir / "completions.jsonl").read_text().splitlines()
    assert [record["step"] for record in records] == [1, 2]
    assert [record["n"] for record in records] == [4, 4]  # 2 processes x 1 prompt x 2 completions
    assert len(completions) == 8
    assert (run_dir / "final" / "config.json").is_file()
