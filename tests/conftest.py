"""Shared fixtures: the reference-format seed data and the handed cases.

Both live in the read-only ``shared`` folder beside the repository (``../shared``),
or where ``LOOPHOLES_SHARED`` points. Tests that need them skip with a reason
where the folder is absent; they are never copied into the repository.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LOOPHOLES_SHARED", REPOSITORY.parent / "shared"))


def shared_seed_dir() -> Path | None:
    """Return the seed data folder, or None where it is absent."""
    path = SHARED / "data" / "seed"
    return path if path.is_dir() else None


def read_cases(name: str) -> list[dict]:
    """Return the handed cases of ``cases/<name>.jsonl``, or an empty list where absent."""
    path = SHARED / "cases" / f"{name}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def seed_dir() -> Path:
    path = shared_seed_dir()
    if path is None:
        pytest.skip(f"reference seed data not found at {SHARED / 'data' / 'seed'}")
    return path


@pytest.fixture
def load_cases():
    def load(name: str) -> list[dict]:
        cases = read_cases(name)
        if not cases:
            pytest.skip(f"handed cases not found at {SHARED / 'cases' / (name + '.jsonl')}")
        return cases

    return load


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised two-layer Llama with the embedded model's tokenizer.

    Small enough that a GRPO step takes seconds on a CPU; its completions are
    noise, which is what training tests need to exercise the whole pipeline.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from loopholes.models import load_tokenizer

    tokenizer = load_tokenizer("embedded")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
