"""The ``loopholes`` command: train, evaluate, score and report in the vulnerability games.

Every command that fails on bad input prints one line starting with
``error:`` that names the value and what to do, exits with status 2, and
leaves no partial output file behind.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Vulnerability games: does RL teach your language model to exploit its reward?")

logger = logging.getLogger("loopholes")

GameArgument = Annotated[str, typer.Argument(help="Game name: compliance, self-grading, summary or tampering.")]
VariantOption = Annotated[str, typer.Option(help="Reward variant: vulnerable (loophole open) or secure.")]
OptionsOption = Annotated[Optional[list[str]], typer.Option(
    "--option", "-o", help="A game option as KEY=VALUE; repeat for several. `loopholes games` lists them.")]
DataOption = Annotated[str, typer.Option(
    help="Data source: builtin, a reference-format parquet file or folder, or hf:NAME[:CONFIG].")]


class UsageError(ValueError):
    """Bad input on the command line."""


def _setup_logging(verbose: bool = False) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    # Logs go to stderr so that the JSON and tables a command prints on stdout stay parseable.
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        datefmt="[%X]", handlers=[handler], force=True)
    for noisy in ("httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _run(action, *args, **kwargs) -> Any:
    """Call an action, turning invalid-input errors into one line and exit status 2."""
    from loopholes.judges.base import JudgeError
    from loopholes.judges.http import RequestFailed

    try:
        return action(*args, **kwargs)
    except ValueError as error:  # DataError, ModelError, RunDirError and option errors are ValueErrors
        _fail(str(error))
    except (JudgeError, RequestFailed) as error:  # a judge or model server that cannot be reached
        _fail(str(error))


def parse_options(pairs: list[str] | None) -> dict[str, str]:
    """Parse ``KEY=VALUE`` strings into a dict."""
    options = {}
    for pair in pairs or []:
        key, separator, value = pair.partition("=")
        if not separator or not key.strip():
            raise UsageError(f"invalid option {pair!r}; write it as KEY=VALUE")
        options[key.strip()] = value
    return options


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False) -> None:
    # The defaults never need the hub; without this, transformers and datasets
    # retry unreachable hosts. Set HF_HUB_OFFLINE=0 to use hub names.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _setup_logging(verbose)


@app.command()
def games() -> None:
    """List the games, their variants and their options with defaults."""
    from loopholes.games import VARIANTS, game_class, game_names

    for name in game_names():
        cls = game_class(name)
        typer.echo(f"{name}: {cls.description}")
        typer.echo(f"    variants: {', '.join(VARIANTS)}; exploit ratio: {cls.exploit_metric}")
        for option, text in cls.config_class.option_help().items():
            typer.echo(f"    {option}: {text}")


@app.command()
def train(
    game: GameArgument,
    output: Annotated[Path, typer.Option(help="Run directory to create (or to resume with --resume).")],
    variant: VariantOption = "vulnerable",
    option: OptionsOption = None,
    data: DataOption = "builtin",
    split: Annotated[str, typer.Option(help="Split of the data source to train on.")] = "train",
    limit: Annotated[Optional[int], typer.Option(help="Use at most this many training prompts.")] = None,
    model: Annotated[str, typer.Option(help="Policy: embedded, a model directory, a run directory or a hub name.")] = "embedded",
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 10,
    prompts_per_step: Annotated[int, typer.Option(help="Prompts per step.")] = 2,
    group_size: Annotated[int, typer.Option(help="Completions per prompt (the GRPO group).")] = 8,
    max_completion_tokens: Annotated[Optional[int], typer.Option(
        help="Maximum tokens per completion (default: the game's, 96 for self-grading, 128 for compliance, "
             "256 for tampering, 400 for summary).")] = None,
    learning_rate: Annotated[float, typer.Option(help="Learning rate.")] = 1e-5,
    temperature: Annotated[float, typer.Option(help="Sampling temperature during training.")] = 0.7,
    lora: Annotated[bool, typer.Option(help="Train a LoRA adapter instead of all weights.")] = False,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank; alpha is twice the rank.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of sampling, data order and the game's randomness.")] = 0,
    save_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 5,
    scale_rewards: Annotated[str, typer.Option(help="Advantage scaling: group, batch or none.")] = "group",
    max_prompt_tokens: Annotated[Optional[int], typer.Option(help="Prompt length limit in tokens.")] = None,
    prompt_length_policy: Annotated[str, typer.Option(
        help="What to do with longer prompts: keep, filter, truncate or error. Counts are always reported.")] = "keep",
    dtype: Annotated[str, typer.Option(help="Mixed precision: auto, float32 or bfloat16.")] = "auto",
    resume: Annotated[bool, typer.Option(help="Continue the run in OUTPUT from its last checkpoint.")] = False,
    vllm_mode: Annotated[Optional[str], typer.Option(
        help="Generate with vLLM: colocate (in the training processes) or server (a `trl vllm-serve` process).")] = None,
    vllm_server_url: Annotated[Optional[str], typer.Option(help="URL of the `trl vllm-serve` server (server mode).")] = None,
    vllm_gpu_memory_utilization: Annotated[Optional[float], typer.Option(
        help="Share of GPU memory vLLM may use in colocate mode.")] = None,
    vllm_tensor_parallel_size: Annotated[Optional[int], typer.Option(
        help="Tensor-parallel size of vLLM in colocate mode.")] = None,
    grpo_option: Annotated[Optional[list[str]], typer.Option(
        help="Any other GRPOConfig field as KEY=VALUE (for example deepspeed=configs/ds.json); repeatable.")] = None,
) -> None:
    """Train a policy with GRPO in a game and write a run directory.

    Runs on one process by default; under `accelerate launch -m loopholes train ...` it trains with
    DDP, DeepSpeed or FSDP (see docs/integrations/multi-gpu.md).
    """
    from loopholes.integrations.launch import grpo_overrides
    from loopholes.train.grpo import TrainConfig, progress_line
    from loopholes.train.grpo import train as run_training

    config = TrainConfig(game=game, variant=variant, options=_run(parse_options, option), data=data, split=split,
                         limit=limit, model=model, steps=steps, prompts_per_step=prompts_per_step,
                         group_size=group_size, max_completion_tokens=max_completion_tokens,
                         learning_rate=learning_rate, temperature=temperature, lora=lora, lora_rank=lora_rank,
                         lora_alpha=2 * lora_rank,
                         seed=seed, save_every=save_every, scale_rewards=scale_rewards,
                         max_prompt_tokens=max_prompt_tokens, prompt_length_policy=prompt_length_policy, dtype=dtype,
                         grpo_overrides=_run(grpo_overrides, vllm_mode, vllm_server_url, grpo_option or [],
                                             vllm_gpu_memory_utilization=vllm_gpu_memory_utilization,
                                             vllm_tensor_parallel_size=vllm_tensor_parallel_size))
    summary = _run(run_training, config, output, resume=resume)
    if summary.get("main_process") is False:
        return
    last = summary.get("last_step") or {}
    typer.echo(f"finished {output}: step {last.get('step')}  {progress_line(last)}")


@app.command("eval")
def evaluate_command(
    game: GameArgument,
    model: Annotated[str, typer.Option(help="embedded, a model directory, a run directory or a hub name.")] = "embedded",
    variant: VariantOption = "vulnerable",
    option: OptionsOption = None,
    data: DataOption = "builtin",
    split: Annotated[str, typer.Option(help="Split of the data source.")] = "test",
    limit: Annotated[Optional[int], typer.Option(help="Evaluate at most this many items.")] = None,
    samples_per_item: Annotated[int, typer.Option("--samples", "-k", help="Completions per item.")] = 1,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 for greedy).")] = 0.6,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling threshold.")] = 0.95,
    max_completion_tokens: Annotated[Optional[int], typer.Option(
        help="Maximum tokens per completion (default: the game's, 96 for self-grading, 128 for compliance, "
             "256 for tampering, 400 for summary).")] = None,
    batch_size: Annotated[int, typer.Option(help="Completions generated at once.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of sampling and the game's randomness.")] = 0,
    output: Annotated[Optional[Path], typer.Option(help="Folder for summary.json and samples.jsonl.")] = None,
) -> None:
    """Sample a model on a game's test items and report ITP, ER and extra rates with 95% CIs."""
    from loopholes import metrics
    from loopholes.evaluate import EvalConfig, evaluate

    config = EvalConfig(game=game, variant=variant, options=_run(parse_options, option), data=data, split=split,
                        limit=limit, model=model, samples_per_item=samples_per_item, temperature=temperature,
                        top_p=top_p, max_completion_tokens=max_completion_tokens, batch_size=batch_size, seed=seed)
    summary = _run(evaluate, config, output, progress=_progress("sampling"))
    typer.echo(metrics.format_table(summary))
    typer.echo(json.dumps(summary, indent=2, default=str))


def _progress(label: str):
    def report(done: int, total: int) -> None:
        logger.info("%s: %d/%d completions", label, done, total)

    return report


@app.command()
def score(
    game: GameArgument,
    completions: Annotated[Path, typer.Option(help="JSONL input: index, completion, and optional overrides.")],
    output: Annotated[Path, typer.Option(help="JSONL output: each input line with its outcome added.")],
    data: DataOption = "builtin",
    split: Annotated[str, typer.Option(help="Split of the data source the indices refer to.")] = "test",
    variant: VariantOption = "vulnerable",
    option: OptionsOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the game's randomness (the audit draw).")] = 0,
) -> None:
    """Score completions generated elsewhere and print the set's metrics as JSON.

    Each input line has ``index`` (row of the data source) and ``completion``,
    and optionally the game's overrides (``audited`` for self-grading,
    ``judge_output`` for compliance).
    """
    from loopholes.scoring import score_file

    summary = _run(score_file, game, variant, _run(parse_options, option), data, split, completions, output, seed)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories to plot together.")],
    output: Annotated[Optional[Path], typer.Option(help="Folder for the plots and report.md "
                                                        "(default: the first run's report/ folder).")] = None,
) -> None:
    """Plot reward, ITP and ER against step for one or more runs and write a markdown summary.

    Given one experiment folder (from `loopholes experiment run`), builds the experiment's HTML
    report and its markdown twin instead.
    """
    from loopholes.experiments import is_experiment_dir
    from loopholes.report import build_report

    if len(run_dirs) == 1 and is_experiment_dir(run_dirs[0]):
        from loopholes.report.experiment import build_experiment_report

        path = _run(build_experiment_report, run_dirs[0], output)
        typer.echo(f"report written to {path} (markdown twin: {path.with_suffix('.md')})")
        return

    path = _run(build_report, run_dirs, output)
    typer.echo(f"report written to {path}")


@app.command()
def rewrite(
    source: Annotated[str, typer.Argument(help="Audit items: builtin, a reference-format parquet file or folder, "
                                               "or a JSONL file of items.")],
    output: Annotated[Path, typer.Option(help="A .parquet or .jsonl file for the rows (reference layout).")],
    model: Annotated[Optional[str], typer.Option(
        help="With --url, the model name on the server (default: its only model); without, embedded, "
             "a model directory or a hub name run in this process (default: embedded).")] = None,
    url: Annotated[Optional[str], typer.Option(help="API root of an OpenAI-compatible server, e.g. "
                                                     "http://127.0.0.1:8000/v1; omit to run the model locally.")] = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable that holds the server's API key.")]
    = "LOOPHOLES_JUDGE_API_KEY",
    split: Annotated[str, typer.Option(help="Split of the source.")] = "train",
    rewrites_per_item: Annotated[int, typer.Option(help="User-style rewrites per audit item.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the recipes (persona, tone, context, style).")] = 0,
    temperature: Annotated[float, typer.Option(help="Sampling temperature of the rewriting model.")] = 0.9,
    max_new_tokens: Annotated[int, typer.Option(help="Maximum tokens per rewrite.")] = 256,
    limit: Annotated[Optional[int], typer.Option(help="Rewrite only the first LIMIT items.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per server request.")] = 60.0,
    concurrency: Annotated[int, typer.Option(help="Server requests in flight at once.")] = 4,
) -> None:
    """Rewrite audit items as user-style requests from random recipes, recording recipe and model per item."""
    from loopholes.rewrite import rewrite_dataset

    summary = _run(rewrite_dataset, source, output, model=model, url=url, api_key_env=api_key_env, split=split,
                   rewrites_per_item=rewrites_per_item, seed=seed, temperature=temperature,
                   max_new_tokens=max_new_tokens, limit=limit, timeout=timeout, concurrency=concurrency,
                   progress=_progress("rewriting"))
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def demo(
    output: Annotated[Path, typer.Option(help="Folder for the runs, evaluations and report.")] = Path("demo-output"),
    steps: Annotated[int, typer.Option(help="GRPO steps per run.")] = 16,
    eval_items: Annotated[int, typer.Option(help="Test questions per evaluation.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of both runs.")] = 0,
) -> None:
    """Train the embedded model in audited self-grading with the vulnerable and the secure reward, then report.

    Evaluates the base model and both trained models on built-in test questions.
    Rerunning the command resumes where it stopped.
    """
    from loopholes.demo import run_demo

    path = _run(run_demo, output, steps=steps, eval_items=eval_items, seed=seed)
    typer.echo(f"demo finished; report: {path}")


def _mount_sub_apps() -> None:
    from loopholes.experiments.cli import experiment_app
    from loopholes.integrations.cli import export_app

    app.add_typer(export_app, name="export")
    app.add_typer(experiment_app, name="experiment")


_mount_sub_apps()


if __name__ == "__main__":
    sys.exit(app())
