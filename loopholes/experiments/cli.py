"""The ``loopholes experiment`` commands: run a YAML experiment and report it.

Mounted on the main command with ``app.add_typer(experiment_app, name="experiment")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

experiment_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                             help="Run the study's experiments from YAML configs and report them.")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _call(action, *args, **kwargs) -> Any:
    """Call an action, turning invalid-input errors (ValueError and subclasses) into one line and exit status 2."""
    try:
        return action(*args, **kwargs)
    except ValueError as error:
        _fail(str(error))


def output_folder(config, output: Path | None) -> Path:
    """Return the experiment folder: ``--output``, the config's ``output`` key, or ``experiments/NAME``."""
    if output is not None:
        return output
    if config.output:
        return Path(config.output)
    return Path("experiments") / config.name


@experiment_app.command("run")
def run(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Experiment config (YAML).")],
    output: Annotated[Optional[Path], typer.Option(
        help="Experiment folder (default: the config's output key, else experiments/NAME).")] = None,
    kind: Annotated[Optional[list[str]], typer.Option(
        "--kind", help="Run only this kind and the parts it needs; repeat for several.")] = None,
    dry_run: Annotated[bool, typer.Option(
        help="Check the config, data and models, list the parts and their status, and stop.")] = False,
    report: Annotated[bool, typer.Option(help="Write the report when the run finishes.")] = True,
) -> None:
    """Run an experiment: check everything, then do each part without a result (rerun to resume)."""
    from loopholes.experiments import load_config, plan_status, run_experiment
    from loopholes.experiments.runner import Runner

    config = _call(load_config, config_path)
    folder = output_folder(config, output)
    if dry_run:
        runner = _call(Runner, config, folder, kind)
        _call(runner.check)
        for row in plan_status(config, folder, kind):
            typer.echo(f"{row['status']:<9} {row['action']:<7} {row['part']}")
        return

    _call(run_experiment, config, folder, kind, source_text=config_path.read_text())
    typer.echo(f"experiment finished: {folder}")
    if report:
        from loopholes.report.experiment import build_experiment_report

        path = _call(build_experiment_report, folder)
        typer.echo(f"report written to {path} (markdown twin: {path.with_suffix('.md')})")


@experiment_app.command("report")
def report_command(
    experiment_dir: Annotated[Path, typer.Argument(metavar="EXPERIMENT_DIR", help="Folder written by `run`.")],
    output: Annotated[Optional[Path], typer.Option(
        help="Folder for report.html, report.md and the plots (default: EXPERIMENT_DIR/report).")] = None,
) -> None:
    """Write the experiment's HTML report and its markdown twin (plots, heat maps, tables with CIs, examples)."""
    from loopholes.report.experiment import build_experiment_report

    path = _call(build_experiment_report, experiment_dir, output)
    typer.echo(f"report written to {path} (markdown twin: {path.with_suffix('.md')})")
