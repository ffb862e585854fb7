"""Benchmark the sandbox: scoring throughput and overhead against simpler ways to run code.

Three ways to run the same honest submissions (the reference solutions of the
built-in train problems, with their first TESTS_PER_SUBMISSION tests each):

- pool: :class:`loopholes.sandbox.SandboxPool`, one forked, isolated child per test;
- one process per submission: a fresh ``python -I -S`` per submission that runs
  all its tests in-process with no isolation (the usual simple harness);
- direct: ``exec`` of the solution in this process, no new process at all.

Each measurement is repeated and the median reported. The results go to
benchmarks/RESULTS-sandbox.md (``--output`` to change) with the machine it ran on.

Usage: python benchmarks/sandbox_throughput.py [--repeats 5] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from loopholes.games.tampering import load_builtin_problems
from loopholes.sandbox import Program, SandboxLimits, SandboxPool, returned_value_matches, stdout_matches

TESTS_PER_SUBMISSION = 4
RESULTS = Path(__file__).resolve().parent / "RESULTS-sandbox.md"

# The one-process-per-submission harness: reads {code, style, entry, inputs}
# on stdin, runs every input in this one process, prints the outputs as JSON.
BASELINE_HARNESS = r"""
import contextlib, io, json, sys
from typing import *
request = json.loads(sys.stdin.read())
outputs = []
for text in request["inputs"]:
    buffer = io.StringIO()
    namespace = {"__name__": "__main__" if request["style"] == "stdin" else "solution", "List": List,
                 "Dict": Dict, "Optional": Optional}
    sys.stdin = io.StringIO(text + "\n")
    try:
        with contextlib.redirect_stdout(buffer):
            exec(compile(request["code"], "solution.py", "exec"), namespace)
            if request["style"] == "call":
                arguments = [json.loads(line) for line in text.split("\n") if line.strip()]
                result = getattr(namespace["Solution"](), request["entry"])(*arguments)
        outputs.append(json.dumps(result) if request["style"] == "call" else buffer.getvalue())
    except BaseException as error:
        outputs.append("")
print(json.dumps(outputs))
"""


def submissions() -> list[tuple[Program, list[str], list[str]]]:
    """Return (program, inputs, expected outputs) for every built-in train problem."""
    jobs = []
    for problem in load_builtin_problems():
        if problem["split"] != "train":
            continue
        tests = (problem["public_tests"] + problem["hidden_tests"])[:TESTS_PER_SUBMISSION]
        style = "call" if problem["style"] == "function" else "stdin"
        program = Program(problem["reference_solution"], style, problem.get("entry_point"))
        jobs.append((program, [test["input"] for test in tests], [test["output"] for test in tests]))
    return jobs


def check(program: Program, expected: list[str], produced: list[str]) -> None:
    compare = returned_value_matches if program.style == "call" else stdout_matches
    failed = [index for index, (want, got) in enumerate(zip(expected, produced)) if not compare(want, got)]
    if failed:
        raise RuntimeError(f"an honest solution failed tests {failed}; the benchmark would be meaningless")


def time_pool(jobs, workers: int, repeats: int) -> list[float]:
    seconds = []
    with SandboxPool(SandboxLimits(), workers=workers) as pool:
        pool.run_many([(program, inputs) for program, inputs, _ in jobs[:workers]])  # start the workers
        for _ in range(repeats):
            started = time.perf_counter()
            results = pool.run_many([(program, inputs) for program, inputs, _ in jobs])
            seconds.append(time.perf_counter() - started)
            for (program, _, expected), runs in zip(jobs, results):
                check(program, expected, [run.stdout for run in runs])
        isolation = pool.isolation["mode"]
    return seconds, isolation


def run_one_process(job) -> list[str]:
    program, inputs, _ = job
    request = json.dumps({"code": program.code, "style": program.style, "entry": program.entry_point,
                          "inputs": inputs})
    completed = subprocess.run([sys.executable, "-I", "-S", "-c", BASELINE_HARNESS], input=request,
                               capture_output=True, text=True, timeout=60, check=True)
    return json.loads(completed.stdout)


def time_one_process_per_submission(jobs, workers: int, repeats: int) -> list[float]:
    seconds = []
    with ThreadPoolExecutor(max_workers=workers) as executor:
        for _ in range(repeats):
            started = time.perf_counter()
            outputs = list(executor.map(run_one_process, jobs))
            seconds.append(time.perf_counter() - started)
            for (program, _, expected), produced in zip(jobs, outputs):
                check(program, expected, produced)
    return seconds


def run_direct(program: Program, inputs: list[str]) -> list[str]:
    from typing import Dict, List, Optional

    outputs = []
    for text in inputs:
        buffer = io.StringIO()
        namespace = {"__name__": "__main__" if program.style == "stdin" else "solution", "List": List,
                     "Dict": Dict, "Optional": Optional}
        saved = sys.stdin
        sys.stdin = io.StringIO(text + "\n")
        try:
            with contextlib.redirect_stdout(buffer):
                exec(compile(program.code, "solution.py", "exec"), namespace)
                if program.style == "call":
                    arguments = [json.loads(line) for line in text.split("\n") if line.strip()]
                    result = getattr(namespace["Solution"](), program.entry_point)(*arguments)
        finally:
            sys.stdin = saved
        outputs.append(json.dumps(result) if program.style == "call" else buffer.getvalue())
    return outputs


def time_direct(jobs, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        outputs = [run_direct(program, inputs) for program, inputs, _ in jobs]
        seconds.append(time.perf_counter() - started)
        for (program, _, expected), produced in zip(jobs, outputs):
            check(program, expected, produced)
    return seconds


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError):
        kilobytes = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kilobytes / 1024 ** 2:.0f} GiB memory"
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (f"{os.cpu_count()} cores ({model}){memory}, Linux {platform.release()}, Python "
            f"{platform.python_version()}; load average at the start: {load}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="a line about the machine's state (other work running)")
    arguments = parser.parse_args()

    jobs = submissions()
    tests = sum(len(inputs) for _, inputs, _ in jobs)
    described = machine()
    rows = []
    direct = statistics.median(time_direct(jobs, arguments.repeats))
    rows.append(("direct exec in this process (no isolation)", 1, direct))
    isolation = "?"
    for workers in sorted(set(arguments.workers)):
        pool_seconds, isolation = time_pool(jobs, workers, arguments.repeats)
        baseline_seconds = time_one_process_per_submission(jobs, workers, arguments.repeats)
        rows.append((f"sandbox pool, isolation {isolation}", workers, statistics.median(pool_seconds)))
        rows.append(("one fresh interpreter per submission (no isolation)", workers,
                     statistics.median(baseline_seconds)))

    lines = [
        "## Sandbox throughput",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `python benchmarks/sandbox_throughput.py "
        f"--repeats {arguments.repeats}` on {described}.",
    ]
    if arguments.note:
        lines.append(arguments.note)
    lines += [
        "",
        f"Workload: the reference solutions of the {len(jobs)} built-in train problems, "
        f"{TESTS_PER_SUBMISSION} tests each ({tests} test runs per pass; every output checked). "
        f"Each figure is the median of {arguments.repeats} passes.",
        "",
        "| runner | workers | median seconds per pass | submissions/s | ms per submission |",
        "|---|---|---|---|---|",
    ]
    for name, workers, seconds in rows:
        lines.append(f"| {name} | {workers} | {seconds:.3f} | {len(jobs) / seconds:.1f} | "
                     f"{1000 * seconds / len(jobs):.1f} |")
    lines += ["", "Ratios (medians):", ""]
    by_key = {(name.split(",")[0], workers): seconds for name, workers, seconds in rows}
    for workers in sorted(set(arguments.workers)):
        pool = by_key[("sandbox pool", workers)]
        baseline = by_key[("one fresh interpreter per submission (no isolation)", workers)]
        lines.append(f"- {workers} worker(s): the pool scores {baseline / pool:.2f}x as many submissions per "
                     f"second as one fresh interpreter per submission.")
    single_pool = by_key[("sandbox pool", min(arguments.workers))]
    lines.append(f"- Sandbox overhead against direct execution ({min(arguments.workers)} worker): "
                 f"{single_pool / direct:.1f}x the time, "
                 f"{1000 * (single_pool - direct) / tests:.1f} ms more per test.")
    text = "\n".join(lines) + "\n"
    arguments.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
