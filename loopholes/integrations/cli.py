"""The ``loopholes export`` commands: verl parquet export and metrics from verl's generation dumps.

Mounted on the main command with ``app.add_typer(export_app, name="export")``.
Bad input prints one ``error:`` line and exits with status 2, as every
``loopholes`` command does.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

export_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                         help="Export a game to other engines (verl) and read their logs back.")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _parse_pairs(pairs: list[str] | None) -> dict[str, str]:
    options = {}
    for pair in pairs or []:
        key, separator, value = pair.partition("=")
        if not separator or not key.strip():
            _fail(f"invalid option {pair!r}; write it as KEY=VALUE")
        options[key.strip()] = value
    return options


@export_app.command("verl")
def verl_command(
    game: Annotated[str, typer.Argument(help="Game name: compliance, self-grading, summary or tampering.")],
    out: Annotated[Path, typer.Option(help="Folder for SPLIT.parquet and loopholes_export.json.")],
    data: Annotated[str, typer.Option(
        help="Data source: builtin, a reference-format parquet file or folder, or hf:NAME[:CONFIG].")] = "builtin",
    variant: Annotated[str, typer.Option(help="Reward variant recorded in every row: vulnerable or secure.")] = "vulnerable",
    option: Annotated[Optional[list[str]], typer.Option(
        "--option", "-o", help="A game option as KEY=VALUE; repeat for several.")] = None,
    split: Annotated[Optional[list[str]], typer.Option(
        help="A split to export; repeat for several (default: train and test).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Export at most this many rows per split.")] = None,
) -> None:
    """Write a game's prompts as verl parquet files and print the verl settings that score them."""
    from loopholes.integrations.verl import export_verl

    try:
        manifest = export_verl(game, out, variant=variant, options=_parse_pairs(option), data=data,
                               splits=tuple(split or ("train", "test")), limit=limit)
    except ValueError as error:
        _fail(str(error))
        return
    for name, info in manifest["files"].items():
        typer.echo(f"{name}: {info['rows']} rows -> {info['path']}")
    typer.echo("verl settings (verl 0.9; see docs/integrations/verl.md for older versions):")
    for line in verl_overrides(manifest):
        typer.echo(f"  {line}")


def verl_overrides(manifest: dict[str, Any]) -> list[str]:
    """Return the verl command-line overrides that point verl at an export."""
    files = manifest["files"]
    lines = []
    if "train" in files:
        lines.append(f"data.train_files={shlex.quote(files['train']['path'])}")
    validation = files.get("test") or files.get("validation")
    if validation:
        lines.append(f"data.val_files={shlex.quote(validation['path'])}")
    lines.append(f"reward.custom_reward_function.path={shlex.quote(manifest['reward_function']['path'])}")
    lines.append(f"reward.custom_reward_function.name={manifest['reward_function']['name']}")
    return lines


@export_app.command("verl-metrics")
def verl_metrics_command(
    generations: Annotated[list[Path], typer.Argument(
        help="verl generation dumps (trainer.validation_data_dir or rollout_data_dir, or JSONL files), "
             "or `loopholes score` output.")],
    game: Annotated[Optional[str], typer.Option(help="Game of `loopholes score` output (verl dumps name it).")] = None,
    variant: Annotated[str, typer.Option(help="Variant of `loopholes score` output.")] = "vulnerable",
    option: Annotated[Optional[list[str]], typer.Option(
        "--option", "-o", help="A game option of `loopholes score` output, as KEY=VALUE.")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Also write the summaries to this JSON file.")] = None,
) -> None:
    """Compute ITP, ER, the compliance gap and every other set-level metric per step from per-response logs."""
    from loopholes import metrics
    from loopholes.integrations.verl import read_generation_records, summarize_generations

    try:
        records = read_generation_records(generations)
        summaries = summarize_generations(records, game=game, variant=variant, options=_parse_pairs(option))
    except ValueError as error:
        _fail(str(error))
        return
    for summary in summaries:
        typer.echo(f"step: {summary['step']}")
        typer.echo(metrics.format_table(summary))
    text = json.dumps(summaries, indent=2, default=str)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n", encoding="utf-8")
    else:
        typer.echo(text)
