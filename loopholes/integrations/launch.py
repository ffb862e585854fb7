"""Scale-out settings for ``loopholes train``: vLLM generation, extra GRPOConfig fields, accelerate configs.

``loopholes train`` builds TRL's ``GRPOConfig`` from :class:`~loopholes.train.grpo.TrainConfig`
and then applies ``TrainConfig.grpo_overrides``. This module turns the
documented command-line options into those overrides:

- :func:`vllm_overrides`: vLLM generation in ``colocate`` mode (vLLM shares
  each training GPU) or ``server`` mode (a separate ``trl vllm-serve``
  process on other GPUs, reached at ``vllm_server_base_url``);
- :func:`parse_grpo_options`: any other ``GRPOConfig`` field as ``KEY=VALUE``,
  typed from the field's annotation;
- :func:`grpo_overrides`: both merged and checked.

Multi-GPU runs start with ``accelerate launch --config_file CONFIG -m loopholes train ...``;
:func:`load_accelerate_config` reads and checks a config with accelerate's own classes.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

VLLM_MODES = ("colocate", "server")

# GRPOConfig fields that TrainConfig sets, with the TrainConfig setting to use instead.
# The batch fields are also fixed so that one optimiser step uses exactly one
# generation batch, which keeps one metric record per batch.
MANAGED_FIELDS = {
    "output_dir": "the run directory (--output)",
    "max_steps": "steps (--steps)",
    "per_device_train_batch_size": "prompts_per_step x group_size (--prompts-per-step, --group-size)",
    "gradient_accumulation_steps": "nothing: one optimiser step per generation batch keeps one metric record per batch",
    "steps_per_generation": "nothing: one optimiser step per generation batch keeps one metric record per batch",
    "generation_batch_size": "nothing: one optimiser step per generation batch keeps one metric record per batch",
    "num_generations": "group_size (--group-size)",
    "max_completion_length": "max_completion_tokens (--max-completion-tokens)",
    "learning_rate": "learning_rate (--learning-rate)",
    "temperature": "temperature (--temperature)",
    "top_p": "top_p",
    "epsilon": "clip_epsilon",
    "beta": "beta",
    "loss_type": "loss_type",
    "scale_rewards": "scale_rewards (--scale-rewards)",
    "seed": "seed (--seed)",
    "data_seed": "seed (--seed)",
    "save_steps": "save_every (--save-every)",
}


def grpo_fields() -> dict[str, dataclasses.Field]:
    """Return TRL's ``GRPOConfig`` fields by name."""
    from trl import GRPOConfig

    return {item.name: item for item in dataclasses.fields(GRPOConfig)}


def check_grpo_overrides(overrides: Mapping[str, Any]) -> None:
    """Raise ValueError for a key that is not a GRPOConfig field or that TrainConfig sets.

    The message names the key, the closest field names, or the TrainConfig
    setting to use instead.
    """
    fields = grpo_fields()
    for key in overrides:
        if key in MANAGED_FIELDS:
            raise ValueError(f"GRPOConfig field {key!r} is set by loopholes train; use {MANAGED_FIELDS[key]}")
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see trl.GRPOConfig for the fields"
            raise ValueError(f"unknown GRPOConfig field {key!r}{hint}")


def parse_grpo_options(pairs: Sequence[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings into GRPOConfig overrides, typed from each field's annotation.

    Fields typed ``str`` keep the text as given. Other values are read as
    YAML, so ``true``, ``0.5``, ``null``, ``[a, b]`` and ``{k: v}`` become a
    bool, a float, None, a list and a dict.

    Raises:
        ValueError: for a malformed pair, an unknown or managed field, or a
            repeated key.
    """
    fields = grpo_fields()
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, separator, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not separator or not key:
            raise ValueError(f"invalid GRPO option {pair!r}; write it as KEY=VALUE, e.g. vllm_gpu_memory_utilization=0.5")
        if key in overrides:
            raise ValueError(f"GRPO option {key!r} is given twice")
        check_grpo_overrides({key: None})
        overrides[key] = _convert(key, raw, fields[key].type)
    return overrides


def _convert(key: str, raw: str, annotation: Any) -> Any:
    allowed = _annotation_types(annotation)
    if allowed <= {str, type(None)}:
        if type(None) in allowed and raw.strip().lower() in ("none", "null"):
            return None
        return raw
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ValueError(f"invalid value {raw!r} for GRPO option {key!r}: {error}") from error


def _annotation_types(annotation: Any) -> set[type]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return set().union(*(_annotation_types(argument) for argument in typing.get_args(annotation)))
    if annotation is None or annotation is type(None):
        return {type(None)}
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return {annotation}
    return {object}  # list[...], dict[...], Literal and string annotations: read as YAML


def vllm_overrides(mode: str | None, server_url: str | None = None, *,
                   gpu_memory_utilization: float | None = None,
                   tensor_parallel_size: int | None = None) -> dict[str, Any]:
    """Return the GRPOConfig fields for vLLM generation, or nothing without a mode.

    Args:
        mode: ``colocate`` (vLLM runs inside each training process and shares
            its GPU), ``server`` (generation on a ``trl vllm-serve`` process),
            or None for generation with transformers.
        server_url: The server's base URL, e.g. ``http://10.0.0.5:8000``;
            server mode only, and required there.
        gpu_memory_utilization: Share of each GPU's memory vLLM may take in
            colocate mode, in (0, 1]; TRL's default is 0.3.
        tensor_parallel_size: GPUs per vLLM engine in colocate mode; TRL's default is 1.

    Raises:
        ValueError: for an unknown mode, a server URL outside server mode, a
            missing or malformed URL, or a value out of range.
    """
    if mode is None:
        if server_url or gpu_memory_utilization is not None or tensor_parallel_size is not None:
            raise ValueError("vLLM settings were given without --vllm-mode; add --vllm-mode colocate or server")
        return {}
    if mode not in VLLM_MODES:
        raise ValueError(f"unknown vLLM mode {mode!r}; choose one of: {', '.join(VLLM_MODES)}")

    overrides: dict[str, Any] = {"use_vllm": True, "vllm_mode": mode}
    if mode == "server":
        if not server_url:
            raise ValueError("vLLM server mode needs --vllm-server-url, e.g. http://10.0.0.5:8000 "
                             "(the address of `trl vllm-serve`)")
        parsed = urlparse(server_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"invalid vLLM server URL {server_url!r}; give http://HOST:PORT")
        overrides["vllm_server_base_url"] = server_url.rstrip("/")
        if gpu_memory_utilization is not None or tensor_parallel_size is not None:
            raise ValueError("GPU memory share and tensor parallel size of a vLLM server are set on "
                             "`trl vllm-serve` (--gpu-memory-utilization, --tensor-parallel-size), not here")
        return overrides

    if server_url:
        raise ValueError(f"--vllm-server-url {server_url!r} is only used in server mode; drop it or use --vllm-mode server")
    if gpu_memory_utilization is not None:
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"invalid vLLM GPU memory share {gpu_memory_utilization}; give a number in (0, 1]")
        overrides["vllm_gpu_memory_utilization"] = float(gpu_memory_utilization)
    if tensor_parallel_size is not None:
        if tensor_parallel_size < 1:
            raise ValueError(f"invalid vLLM tensor parallel size {tensor_parallel_size}; give 1 or more")
        overrides["vllm_tensor_parallel_size"] = int(tensor_parallel_size)
    return overrides


def grpo_overrides(vllm_mode: str | None = None, vllm_server_url: str | None = None,
                   grpo_options: Sequence[str] = (), *, vllm_gpu_memory_utilization: float | None = None,
                   vllm_tensor_parallel_size: int | None = None) -> dict[str, Any]:
    """Merge the vLLM settings and ``--grpo-option`` pairs into ``TrainConfig.grpo_overrides``.

    Raises:
        ValueError: as :func:`vllm_overrides` and :func:`parse_grpo_options`
            do, and for a ``--grpo-option`` that repeats a vLLM setting.
    """
    merged = vllm_overrides(vllm_mode, vllm_server_url, gpu_memory_utilization=vllm_gpu_memory_utilization,
                            tensor_parallel_size=vllm_tensor_parallel_size)
    extra = parse_grpo_options(grpo_options)
    repeated = sorted(set(merged) & set(extra))
    if repeated:
        raise ValueError(f"GRPO options {repeated} repeat the vLLM settings; set them once")
    merged.update(extra)
    check_grpo_overrides(merged)
    return merged


# -- accelerate configs ---------------------------------------------------------------------

SUPPORTED_DISTRIBUTED_TYPES = ("NO", "MULTI_GPU", "MULTI_CPU", "DEEPSPEED", "FSDP")


def load_accelerate_config(path: str | Path):
    """Read an accelerate config file with accelerate's own loader and check it for ``loopholes train``.

    Returns the ``ClusterConfig``.

    Raises:
        ValueError: for a missing file, keys accelerate does not know, a
            SageMaker config, a distributed type other than those in
            ``SUPPORTED_DISTRIBUTED_TYPES`` (TPU and Megatron-LM are not
            supported), or a DeepSpeed ZeRO stage outside 0-3.
    """
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"accelerate config not found: {path}")
    try:
        config = load_config_from_file(str(path))
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"invalid accelerate config {path}: {error}") from error
    if not isinstance(config, ClusterConfig):
        raise ValueError(f"accelerate config {path} is a {type(config).__name__}; loopholes train needs a "
                         "LOCAL_MACHINE (cluster) config")

    kind = getattr(config.distributed_type, "value", str(config.distributed_type))
    if kind not in SUPPORTED_DISTRIBUTED_TYPES:
        raise ValueError(f"accelerate config {path} has distributed_type {kind}; loopholes train supports "
                         f"{', '.join(SUPPORTED_DISTRIBUTED_TYPES)}")
    if kind == "DEEPSPEED":
        stage = (config.deepspeed_config or {}).get("zero_stage")
        if stage not in (0, 1, 2, 3):
            raise ValueError(f"accelerate config {path} has DeepSpeed zero_stage {stage!r}; give 0, 1, 2 or 3")
    return config
