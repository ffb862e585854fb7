"""The experiment report: one HTML page and its markdown twin.

:func:`build_experiment_report` reads an experiment folder (written by
``loopholes experiment run``), computes the analyses
(:func:`loopholes.experiments.analyze`) and writes to ``EXPERIMENT_DIR/report``:

- ``report.html``: one self-contained page (plots embedded as PNG data);
- ``report.md``: the same content in markdown, linking the PNG files;
- the PNG plots: ITP / ER / reward curves with 95% bands over seeds, the
  transfer matrices as heat maps, catalysis and persistence ER curves.

Both documents hold the same sections. There is one per kind in the config
(emergence, transfer, catalysis, distillation, persistence), then sampled
completions that show the exploit in the model's own words, skipped parts,
the measured time of every part, and the configs used.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopholes.train import rundir

logger = logging.getLogger(__name__)

ITP = "intended_task_performance"
EXAMPLES_PER_GAME = 3
PROMPT_CHARACTERS = 600
COMPLETION_CHARACTERS = 1500


# -- document blocks, rendered twice ----------------------------------------------


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: Path
    caption: str


@dataclass
class Code:
    text: str
    summary: str = ""   # a non-empty summary folds the block (HTML details)


def render_markdown(title: str, blocks: list[Any], output: Path) -> str:
    lines = [f"# {title}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(block.header) + " |")
            lines.append("|" + "---|" * len(block.header))
            for row in block.rows:
                lines.append("| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in row) + " |")
            lines.append("")
        elif isinstance(block, Image):
            lines += [f"![{block.caption}]({block.path.relative_to(output)})", "", f"*{block.caption}*", ""]
        elif isinstance(block, Code):
            if block.summary:
                lines += [f"**{block.summary}**", ""]
            fence = "````" if "```" in block.text else "```"
            lines += [fence, block.text.rstrip(), fence, ""]
    return "\n".join(lines)


def render_html(title: str, blocks: list[Any]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            header = "".join(f"<th>{html.escape(cell)}</th>" for cell in block.header)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                           for row in block.rows)
            body.append(f"<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Image):
            data = base64.b64encode(block.path.read_bytes()).decode()
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.caption)}">'
                        f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
        elif isinstance(block, Code):
            code = f"<pre>{html.escape(block.text)}</pre>"
            if block.summary:
                code = f"<details><summary>{html.escape(block.summary)}</summary>{code}</details>"
            body.append(code)
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
             "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
             "th{background:#f3f3f3}img{max-width:100%}figcaption{font-size:0.85em;color:#555}"
             "pre{background:#f7f7f7;padding:8px;overflow-x:auto;white-space:pre-wrap}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# -- formatting -------------------------------------------------------------------


def fmt(estimate: Any, digits: int = 3) -> str:
    """Render an estimate dict as ``0.250 [0.120, 0.440]``; ``n/a`` where it has no value."""
    if not isinstance(estimate, dict) or estimate.get("value") is None:
        return "n/a"
    text = f"{estimate['value']:.{digits}f}"
    if estimate.get("ci_low") is not None and estimate.get("ci_high") is not None:
        text += f" [{estimate['ci_low']:.{digits}f}, {estimate['ci_high']:.{digits}f}]"
    return text


def fmt_steps(entry: dict[str, Any]) -> str:
    """Render a steps-to-threshold result as ``mean step (k/n seeds)``."""
    if not entry or not entry.get("seeds"):
        return "no runs"
    if entry["mean_step"] is None:
        return f"not reached in {entry['max_step']} steps (0/{entry['seeds']} seeds)"
    return f"{entry['mean_step']:.1f} ({entry['crossed']}/{entry['seeds']} seeds)"


# -- plots ------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(axis, band: dict[str, list], label: str, colour: str | None = None, linestyle: str = "-") -> None:
    if not band or not band.get("steps"):
        return
    line, = axis.plot(band["steps"], band["value"], marker="o", markersize=3, label=label, color=colour,
                      linestyle=linestyle)
    axis.fill_between(band["steps"], band["ci_low"], band["ci_high"], color=line.get_color(), alpha=0.15)


def plot_emergence(game: str, section: dict[str, Any], output: Path) -> Path:
    plt = _pyplot()
    er = section["exploit_key"]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for axis, (metric, title) in zip(axes, (("reward", "reward"), (ITP, "ITP"), (er, f"ER ({er})"))):
        for variant in ("vulnerable", "secure"):
            _band(axis, section["curves"][variant][metric], variant)
        axis.set_title(title)
        axis.set_xlabel("step")
    axes[2].axhline(section["threshold"], color="grey", linestyle=":", label="emergence threshold")
    axes[1].set_ylim(-0.02, 1.02)
    # A compliance gap can be negative; other exploit ratios lie in [0, 1].
    axes[2].set_ylim(min(-0.02, axes[2].get_ylim()[0]), 1.02)
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    figure.suptitle(f"{game}: training curves, mean over seeds with 95% bands", fontsize=10)
    figure.tight_layout()
    path = output / f"emergence-{game}.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_transfer(transfer: dict[str, Any], name: str, output: Path) -> Path:
    import numpy as np

    plt = _pyplot()
    sources, targets = transfer["sources"], transfer["targets"]
    values = np.full((len(sources), len(targets)), np.nan)
    labels = [["n/a"] * len(targets) for _ in sources]
    for i, source in enumerate(sources):
        for j, target in enumerate(targets):
            change = transfer["cells"][source][target][name]["change"]
            if change.get("value") is not None:
                values[i, j] = change["value"]
                labels[i][j] = f"{change['value']:+.2f}\n[{change['ci_low']:+.2f}, {change['ci_high']:+.2f}]"
    limit = max(0.05, float(np.nanmax(np.abs(values))) if not np.all(np.isnan(values)) else 1.0)
    figure, axis = plt.subplots(figsize=(1.8 * len(targets) + 2.5, 1.3 * len(sources) + 1.8))
    image = axis.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit)
    for i in range(len(sources)):
        for j in range(len(targets)):
            axis.text(j, i, labels[i][j], ha="center", va="center", fontsize=8)
    axis.set_xticks(range(len(targets)), targets, rotation=20)
    axis.set_yticks(range(len(sources)), sources)
    axis.set_xlabel("target game (evaluated)")
    axis.set_ylabel("source game (trained, vulnerable reward)")
    title = "ER" if name == "er" else "ITP"
    axis.set_title(f"{title} change against the base model, 95% CI", fontsize=10)
    figure.colorbar(image, ax=axis, shrink=0.8)
    figure.tight_layout()
    path = output / f"transfer-{name}.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_panels(panels: list[tuple[str, list[tuple[str, dict]], float]], name: str, ylabel: str,
                output: Path) -> Path:
    """Plot one panel per (title, [(label, band)], threshold)."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for axis, (title, bands, threshold) in zip(axes[0], panels):
        for label, band in bands:
            _band(axis, band, label)
        axis.axhline(threshold, color="grey", linestyle=":", label="threshold")
        axis.set_ylim(min(-0.02, axis.get_ylim()[0]), 1.02)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("step")
        axis.set_ylabel(ylabel)
        axis.legend(fontsize=7)
    figure.tight_layout()
    path = output / f"{name}.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# -- sections ---------------------------------------------------------------------


def emergence_blocks(results: dict[str, Any], output: Path) -> list[Any]:
    blocks: list[Any] = [Heading("Emergence"), Paragraph(
        "Vulnerable-reward and secure-reward GRPO from the same start, per seed. Curves are training-step "
        "metrics over each step's completions; final values are evaluations on the test split. "
        "Intervals are 95%: over seeds by a two-level bootstrap, or the per-evaluation interval with one seed.")]
    rows = []
    for game, section in results["emergence"]["games"].items():
        for variant in ("vulnerable", "secure"):
            final = section["final"][variant]
            rows.append([game, variant, str(section["seeds_found"][variant]),
                         fmt_steps(section["first_step_above"][variant]), fmt(final["itp"]), fmt(final["er"]),
                         fmt(final["itp_change"]), fmt(final["er_change"])])
        base = section["final"]["base"]
        rows.append([game, "base model", "-", "-", fmt(base["itp"]), fmt(base["er"]), "-", "-"])
    blocks.append(Table(["game", "training", "seeds", "first step with ER >= threshold", "final ITP", "final ER",
                         "ITP change vs base", "ER change vs base"], rows))

    spot_rows = []
    for game, section in results["emergence"]["games"].items():
        spot = section["blind_spot"]
        changes = spot["changes"]
        flag = {True: "yes", False: "no", None: "too few steps"}[spot["flag"]]
        spot_rows.append([game, flag, f"{spot['flagged_seeds']}/{len(spot['per_seed'])}",
                          _signed(changes.get("reward")), _signed(changes.get(ITP)), _signed(changes.get("exploit")),
                          fmt(section["vulnerable_minus_secure"]["er"])])
    blocks.append(Paragraph("Blind spot: reward and ITP rise together while ER rises by at least "
                            f"{_rule(results)} (changes: last-quarter mean minus first-quarter mean of the "
                            "seed-mean vulnerable curves)."))
    blocks.append(Table(["game", "blind spot", "seeds flagged", "reward change", "ITP change", "ER change",
                         "final ER, vulnerable minus secure"], spot_rows))
    for game, section in results["emergence"]["games"].items():
        path = plot_emergence(game, section, output)
        blocks.append(Image(path, f"{game}: reward, ITP and ER ({section['exploit_key']}) against step, vulnerable "
                                  f"and secure reward; ER threshold {section['threshold']}"))
    return blocks


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def _rule(results: dict[str, Any]) -> str:
    games = results["emergence"]["games"]
    rule = next(iter(games.values()))["blind_spot"]["rule"] if games else {"min_er_rise": "?", "min_itp_rise": "?"}
    return f"{rule['min_er_rise']} and ITP by more than {rule['min_itp_rise']}"


def transfer_blocks(results: dict[str, Any], output: Path) -> list[Any]:
    transfer = results["transfer"]
    blocks: list[Any] = [Heading("Zero-shot transfer"), Paragraph(
        "Each game's vulnerable-reward exploiter evaluated on every game, against the base model on the same "
        "items. One seed: Newcombe's interval for proportions; several seeds: two-level bootstrap over seeds.")]
    rows = []
    for source in transfer["sources"]:
        for target in transfer["targets"]:
            cell = transfer["cells"][source][target]
            rows.append([source, target, str(cell["seeds_found"]), fmt(cell["er"]["trained"]), fmt(cell["er"]["base"]),
                         fmt(cell["er"]["change"]), fmt(cell["itp"]["change"])])
    blocks.append(Table(["source (trained)", "target (evaluated)", "seeds", "ER trained", "ER base", "ER change",
                         "ITP change"], rows))
    blocks.append(Image(plot_transfer(transfer, "er", output), "ER change against the base model (source x target)"))
    blocks.append(Image(plot_transfer(transfer, "itp", output), "ITP change against the base model (source x target)"))
    return blocks


def catalysis_blocks(results: dict[str, Any], output: Path) -> list[Any]:
    pairs = results["catalysis"]["pairs"]
    blocks: list[Any] = [Heading("Catalysis"), Paragraph(
        "Vulnerable-reward training on the target game, started from the source game's exploiter against "
        "from the base model. AUC is the area under the ER curve divided by its step span (the mean ER).")]
    rows = []
    for pair in pairs:
        rows.append([f"{pair['source']} -> {pair['target']}", str(pair["threshold"]),
                     fmt_steps(pair["from_source"]["steps_to_threshold"]),
                     fmt_steps(pair["from_base"]["steps_to_threshold"]),
                     fmt(pair["from_source"]["auc"]), fmt(pair["from_base"]["auc"]), fmt(pair["auc_difference"])])
    blocks.append(Table(["source -> target", "ER threshold", "steps to threshold, from source",
                         "steps to threshold, from base", "ER AUC, from source", "ER AUC, from base",
                         "AUC difference"], rows))
    if pairs:
        panels = [(f"{p['source']} -> {p['target']}", [("from source exploiter", p["from_source"]["curve"]),
                                                       ("from base", p["from_base"]["curve"])], p["threshold"])
                  for p in pairs]
        blocks.append(Image(plot_panels(panels, "catalysis", "ER", output),
                            "ER of vulnerable training on the target game, from the source exploiter and from base"))
    return blocks


def distillation_blocks(results: dict[str, Any], output: Path) -> list[Any]:
    games = results["distillation"]["games"]
    blocks: list[Any] = [Heading("Distillation"), Paragraph(
        "The teacher (each game's vulnerable-reward exploiter) is sampled on the training prompts; rollouts "
        "that pass the filter become the SFT data set (distillation/GAME-seedS/dataset.jsonl); the student "
        "is fine-tuned on them and evaluated on the test split.")]
    data_rows = []
    for game, section in games.items():
        for data in section["data"]:
            threshold = f" >= {data['reward_threshold']}" if data.get("reward_threshold") is not None else ""
            data_rows.append([game, str(data["seed"]), f"{data['filter']}{threshold}", str(data["rollouts"]),
                              str(data["kept"]), str(data["kept_exploits"]), _share(data["teacher_exploit_share"])])
    blocks.append(Table(["game", "seed", "filter", "rollouts", "kept", "kept exploits", "teacher exploit share"],
                        data_rows))
    rows = []
    for game, section in games.items():
        rows.append([game, str(section["seeds_found"]), fmt(section["er"]["student_base"]), fmt(section["er"]["teacher"]),
                     fmt(section["er"]["student"]), fmt(section["er"]["student_change"]),
                     fmt(section["itp"]["student_change"])])
    blocks.append(Table(["game", "seeds", "ER student base", "ER teacher", "ER student", "ER change of student",
                         "ITP change of student"], rows))
    return blocks


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def persistence_blocks(results: dict[str, Any], output: Path) -> list[Any]:
    games = results["persistence"]["games"]
    names = {"rl": "RL exploiter", "sft": "SFT student", "base": "base model"}
    blocks: list[Any] = [Heading("Persistence"), Paragraph(
        "Secure-reward GRPO starting from the RL-trained exploiter, the SFT-distilled student and the base "
        "model. An exploit persists where ER stays at or above the threshold.")]
    rows = []
    for game, section in games.items():
        for start, entry in section["starts"].items():
            rows.append([game, names[start], str(entry["seeds_found"]), fmt(entry["start_er"]), fmt(entry["end_er"]),
                         fmt_steps(entry["steps_below"]), fmt(entry["auc"]), fmt(entry["final"]["er"])])
    blocks.append(Table(["game", "start", "seeds", "ER at first step", "ER at last step",
                         "first step with ER < threshold", "ER AUC", "final ER (test)"], rows))
    if games:
        panels = [(game, [(names[start], entry["curve"]) for start, entry in section["starts"].items()],
                   section["threshold"]) for game, section in games.items()]
        blocks.append(Image(plot_panels(panels, "persistence", "ER", output),
                            "ER during secure-reward training from each start, mean over seeds with 95% bands"))
    return blocks


def example_blocks(directory: Path, results: dict[str, Any]) -> list[Any]:
    """Quote exploiting completions of vulnerable-trained models, from evaluations, else from training."""
    from loopholes.experiments.analysis import Folder

    folder = Folder(directory)
    blocks: list[Any] = [Heading("The exploit in the model's own words"), Paragraph(
        f"Up to {EXAMPLES_PER_GAME} completions per game whose outcome is flagged as an exploit, from test-split "
        "evaluations of vulnerable-trained models, or else from their training completions.")]
    for game in results["games"]:
        found, looked = [], 0
        for seed in folder.config.seeds:
            label = folder.exploiter_label(game, seed)
            records = rundir.read_jsonl(directory / "evals" / label / game / "samples.jsonl")
            run_key = folder.run_key(game, "vulnerable", seed)
            training = list(reversed(rundir.read_jsonl(directory / run_key / rundir.COMPLETIONS_FILE)))
            for source, pool in ((f"evaluation of {label}", records), (f"training of {run_key}", training)):
                looked += len(pool)
                for record in pool:
                    if record.get("outcome", {}).get("exploited") and len(found) < EXAMPLES_PER_GAME:
                        found.append((source, record))
        blocks.append(Heading(game, 3))
        if not found:
            blocks.append(Paragraph(f"No completion flagged as an exploit among {looked} completions looked at."))
            continue
        prompts = _prompts(folder, game)
        for source, record in found:
            outcome = record["outcome"]
            details = {key: value for key, value in outcome.items()
                       if isinstance(value, bool | int | float | str) and len(str(value)) < 80}
            prompt = prompts.get(record.get("index"), "")
            text = ""
            if prompt:
                text += f"PROMPT (row {record.get('index')}):\n{_clip(prompt, PROMPT_CHARACTERS)}\n\n"
            text += f"COMPLETION:\n{_clip(record.get('completion', ''), COMPLETION_CHARACTERS)}\n\n"
            text += "OUTCOME: " + json.dumps(details, default=str)
            blocks.append(Code(text, f"{source}, row {record.get('index')}"))
    return blocks


def _prompts(folder, game: str) -> dict[int, str]:
    """Return prompt texts by row index for both splits; empty where the data cannot be loaded."""
    from loopholes.data import load_samples
    from loopholes.games import make_game

    entry = folder.config.games[game]
    texts: dict[int, str] = {}
    try:
        instance = make_game(game, "vulnerable", entry.options)
        # Evaluation rows index the test split and training rows the train split; the
        # test split is read last, so evaluation examples show their own prompt.
        for split in (entry.train_split, entry.test_split):
            texts.update({sample.index: sample.prompt_text for sample in load_samples(instance, entry.data, split)})
    except ValueError as error:
        logger.warning("prompts of %s not shown in the report: %s", game, error)
    return texts


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f" [... {len(text) - limit} more characters]"


def part_blocks(directory: Path) -> list[Any]:
    from loopholes.experiments.runner import read_manifest

    manifest = read_manifest(directory)
    blocks: list[Any] = [Heading("Parts and measured times")]
    skipped = [[key, entry.get("reason") or ""] for key, entry in manifest.items() if entry.get("status") == "skipped"]
    if skipped:
        blocks.append(Paragraph("Skipped parts:"))
        blocks.append(Table(["part", "reason"], skipped))
    totals: dict[str, float] = {}
    for entry in manifest.values():
        totals[entry["action"]] = totals.get(entry["action"], 0.0) + entry.get("seconds", 0.0)
    blocks.append(Paragraph("Wall-clock seconds of each part as measured by the runner on the machine that ran "
                            f"it, summed over sessions; total {sum(totals.values()):.0f} s ("
                            + ", ".join(f"{action} {seconds:.0f} s" for action, seconds in sorted(totals.items()))
                            + ")."))
    blocks.append(Table(["part", "action", "status", "seconds"],
                        [[key, entry["action"], entry.get("status", "?"), f"{entry.get('seconds', 0.0):.0f}"]
                         for key, entry in manifest.items()]))
    return blocks


def config_blocks(directory: Path) -> list[Any]:
    blocks: list[Any] = [Heading("Configs used")]
    source = directory / "experiment.yaml"
    if source.is_file():
        blocks.append(Code(source.read_text(), "experiment.yaml (as given)"))
    blocks.append(Code((directory / "config.json").read_text(), "config.json (resolved, with defaults)"))
    return blocks


SECTIONS = {"emergence": emergence_blocks, "transfer": transfer_blocks, "catalysis": catalysis_blocks,
            "distillation": distillation_blocks, "persistence": persistence_blocks}


def build_experiment_report(experiment_dir: Path, output: Path | None = None) -> Path:
    """Write ``report.html``, ``report.md`` and the plots for an experiment folder; return the HTML path.

    Raises:
        ValueError: if the folder was not written by ``loopholes experiment run``.
    """
    from loopholes.experiments import analyze, is_experiment_dir

    directory = Path(experiment_dir)
    if not is_experiment_dir(directory):
        raise ValueError(f"{directory} is not an experiment folder (no parts.json and config.json); "
                         "give a folder written by `loopholes experiment run`")
    output = Path(output) if output is not None else directory / "report"
    output.mkdir(parents=True, exist_ok=True)

    results = analyze(directory)
    title = f"Experiment {results['name']}"
    blocks: list[Any] = [Paragraph(
        f"Model {results['model']}; games {', '.join(results['games'])}; seeds {results['seeds']}; "
        f"kinds {', '.join(results['kinds'])}. Every interval is a 95% confidence interval; "
        "'n/a' marks a number whose runs or evaluations do not exist yet.")]
    for kind, section in SECTIONS.items():
        if kind in results:
            blocks += section(results, output)
    blocks += example_blocks(directory, results)
    blocks += part_blocks(directory)
    blocks += config_blocks(directory)

    (output / "report.md").write_text(render_markdown(title, blocks, output))
    path = output / "report.html"
    path.write_text(render_html(title, blocks))
    rundir.write_json_atomic(output / "results.json", results)
    logger.info("experiment report written to %s", path)
    return path
