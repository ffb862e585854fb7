"""A pool of isolated worker processes that run untrusted programs on test inputs.

Each worker is started once (``_launcher.py`` sets up the isolation, then
starts ``_zygote.py`` in it) and serves one submission at a time, forking a
fresh child for every test. The parent sends the code and the inputs and gets
back what each child printed or returned; expected outputs never leave this
process.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from loopholes.sandbox.limits import ISOLATION_MODES, SandboxLimits

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
LAUNCHER = HERE / "_launcher.py"
ZYGOTE = HERE / "_zygote.py"
STARTUP_TIMEOUT = 60.0
# Time a worker may take beyond the submission's wall-clock limit to fork,
# clean up and reply, before the parent declares it broken.
REPLY_SLACK_SECONDS = 5.0
REPLY_SLACK_PER_TEST = 0.5
SANDBOX_UID_BASE = 1_000_000_000
PROGRAM_STYLES = ("stdin", "call")

_uid_slots = itertools.count()
_live_pools: weakref.WeakSet[SandboxPool] = weakref.WeakSet()


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the submission): the result must be unscored."""


@dataclass(frozen=True)
class Program:
    """Untrusted code and how to run it.

    Attributes:
        code: Python source.
        style: ``stdin`` runs the module with the test input on stdin (and, if
            it read nothing, calls ``Solution().solve()``, ``solve()`` or
            ``main()``); ``call`` calls ``entry_point`` with one JSON argument
            per input line and returns the JSON text of the result.
        entry_point: Method of ``class Solution`` (or function) for ``call``.
    """

    code: str
    style: str = "stdin"
    entry_point: str | None = None

    def __post_init__(self) -> None:
        if self.style not in PROGRAM_STYLES:
            raise ValueError(f"unknown program style {self.style!r}; choose one of: {', '.join(PROGRAM_STYLES)}")
        if self.style == "call" and not self.entry_point:
            raise ValueError("a 'call' program needs an entry_point (the method name from the starter code)")


@dataclass(frozen=True)
class TestRun:
    """The outcome of one test's child process, as reported by the worker."""

    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    cpu_limit: bool = False
    output_limit: bool = False
    skipped: bool = False
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def failure(self) -> str | None:
        """Return why the run cannot pass whatever it printed, or None if it ended normally."""
        if self.skipped:
            return "not run: submission time limit reached"
        if self.output_limit:
            return "output limit exceeded"
        if self.timed_out:
            return "wall-clock time limit exceeded"
        if self.cpu_limit:
            return "cpu time limit exceeded"
        if self.signal is not None:
            return f"killed by signal {self.signal}"
        if self.exit_code != 0:
            return f"runtime error (exit status {self.exit_code})"
        return None

    @classmethod
    def from_report(cls, report: dict) -> TestRun:
        def flag(name: str) -> bool:
            return bool(report.get(name, False))

        def number(name: str) -> float:
            value = report.get(name, 0.0)
            return float(value) if isinstance(value, int | float) else 0.0

        def optional_int(name: str) -> int | None:
            value = report.get(name)
            return value if isinstance(value, int) else None

        return cls(stdout=str(report.get("stdout", "")), stderr=str(report.get("stderr", "")),
                   exit_code=optional_int("exit_code"), signal=optional_int("signal"),
                   timed_out=flag("timed_out"), cpu_limit=flag("cpu_limit"), output_limit=flag("output_limit"),
                   skipped=flag("skipped"), cpu_seconds=number("cpu_seconds"),
                   wall_seconds=number("wall_seconds"))


class _Worker:
    """One launcher process and the worker it started."""

    def __init__(self, isolation: str, uid: int | None):
        config = {
            "isolation": isolation,
            "python": getattr(sys, "_base_executable", sys.executable) or sys.executable,
            "zygote": str(ZYGOTE),
            "uid": uid,
            "scratch_mb": 256,
            "scratch_inodes": 16384,
        }
        self.process = subprocess.Popen(
            [config["python"], "-I", "-S", "-B", str(LAUNCHER), json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, close_fds=True, cwd="/",
        )
        self.buffer = bytearray()
        self.next_id = 0
        try:
            hello = self._read_message(time.monotonic() + STARTUP_TIMEOUT)
        except SandboxError as error:
            detail = self._stderr_text()
            self.kill()
            raise SandboxError(f"sandbox worker failed to start: {error}{': ' + detail if detail else ''}") from None
        if not hello.get("ready"):
            self.kill()
            raise SandboxError(f"sandbox worker failed to start: {hello.get('error', hello)}")
        self.process.stderr.close()
        self.isolation = hello["isolation"]
        self.modules = hello.get("modules", [])
        self.scratch_root = hello.get("scratch_root")

    def _stderr_text(self) -> str:
        try:
            ready, _, _ = select.select([self.process.stderr], [], [], 1.0)
            return self.process.stderr.read1(4096).decode(errors="replace").strip() if ready else ""
        except (OSError, ValueError):
            return ""

    def _read_message(self, deadline: float) -> dict:
        fd = self.process.stdout.fileno()
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SandboxError("the worker did not reply in time")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise SandboxError(f"the worker exited (status {self.process.poll()})")
            self.buffer += chunk
        line, _, rest = self.buffer.partition(b"\n")
        self.buffer = bytearray(rest)
        try:
            return json.loads(line)
        except ValueError as error:
            raise SandboxError(f"the worker sent an unreadable reply: {error}") from None

    def run(self, program: Program, inputs: Sequence[str], limits: SandboxLimits) -> list[TestRun]:
        self.next_id += 1
        request = {"id": self.next_id, "code": program.code, "style": program.style,
                   "entry_point": program.entry_point, "inputs": list(inputs), "limits": limits.to_request()}
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as error:
            raise SandboxError(f"cannot send a request to the worker: {error}") from None
        deadline = (time.monotonic() + limits.wall_per_submission + REPLY_SLACK_SECONDS
                    + REPLY_SLACK_PER_TEST * len(inputs))
        response = self._read_message(deadline)
        if response.get("id") != self.next_id:
            raise SandboxError(f"the worker replied to request {response.get('id')!r}, expected {self.next_id}")
        if "error" in response:
            raise SandboxError(f"the worker failed: {response['error']}")
        reports = response.get("results")
        if not isinstance(reports, list) or len(reports) != len(inputs):
            raise SandboxError(f"the worker returned {len(reports) if isinstance(reports, list) else 'no'} "
                               f"results for {len(inputs)} tests")
        return [TestRun.from_report(report) for report in reports]

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self, timeout: float = 3.0) -> None:
        """Ask the worker to stop (end of input), then make sure every process of it is gone."""
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process.stdout.close()

    def kill(self) -> None:
        # SIGTERM lets the launcher kill the worker and its leftovers; SIGKILL to
        # the session follows if it does not end.
        for signum, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            if self.process.poll() is not None:
                return
            try:
                if signum == signal.SIGKILL:
                    os.killpg(self.process.pid, signum)
                else:
                    self.process.send_signal(signum)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait)
            except subprocess.TimeoutExpired:
                continue


class _Spawner:
    """One long-lived thread that starts every launcher process.

    The launcher asks the kernel for SIGTERM when its parent dies
    (PR_SET_PDEATHSIG), and the kernel sends it when the *thread* that forked
    it exits. Starting workers from short-lived threads (a score_batch thread
    pool) would therefore stop them after each batch.
    """

    def __init__(self) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start_worker(self, isolation: str, uid: int | None) -> _Worker:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="sandbox-spawner", daemon=True)
                self._thread.start()
        done = threading.Event()
        box: dict = {}
        self._requests.put((isolation, uid, done, box))
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["worker"]

    def _serve(self) -> None:
        while True:
            isolation, uid, done, box = self._requests.get()
            try:
                box["worker"] = _Worker(isolation, uid)
            except BaseException as error:  # handed to the waiting caller, which raises it
                box["error"] = error
            done.set()


_spawner = _Spawner()


class SandboxPool:
    """A thread-safe pool of sandbox workers.

    Args:
        limits: Resource limits for every submission.
        workers: Maximum number of workers (submissions run at once).
        isolation: ``auto`` (namespaces where the machine allows them, else
            basic), ``namespaces`` (fail if unavailable) or ``basic``.

    Workers start on first use. A worker that breaks is killed and replaced,
    and the submission it was running raises :class:`SandboxError`.
    """

    def __init__(self, limits: SandboxLimits | None = None, workers: int = 1, isolation: str = "auto"):
        if isolation not in ISOLATION_MODES:
            raise ValueError(f"unknown isolation {isolation!r}; choose one of: {', '.join(ISOLATION_MODES)}")
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.limits = limits or SandboxLimits()
        self.workers = workers
        self.isolation_mode = isolation
        self.restarts = 0
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(workers)
        self._closed = False
        self._owner_pid = os.getpid()
        self._isolation: dict | None = None
        _live_pools.add(self)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def isolation(self) -> dict:
        """Return the isolation layers that the workers run under (starts a worker if none ran yet)."""
        if self._isolation is None:
            worker = self._checkout()
            self._checkin(worker)
        return self._isolation

    def worker_processes(self) -> list[int]:
        """Return the pids of the launcher processes, for tests that check cleanup."""
        with self._lock:
            return [worker.process.pid for worker in self._all if worker.alive()]

    def run(self, program: Program, inputs: Sequence[str]) -> list[TestRun]:
        """Run a program on each input and return one :class:`TestRun` per input.

        Raises:
            SandboxError: the sandbox failed (not the program); the worker was replaced.
        """
        if os.getpid() != self._owner_pid:
            raise SandboxError("this sandbox pool was created in another process (before a fork); "
                               "create a new pool in this process")
        if not inputs:
            return []
        worker = self._checkout()
        try:
            runs = worker.run(program, inputs, self.limits)
        except BaseException as error:
            # A worker interrupted mid-reply cannot be trusted with the next request.
            if isinstance(error, SandboxError):
                logger.error("sandbox worker failed, replacing it: %s", error)
            self._discard(worker)
            raise
        self._checkin(worker)
        return runs

    def run_many(self, jobs: Sequence[tuple[Program, Sequence[str]]]) -> list[list[TestRun] | SandboxError]:
        """Run many programs concurrently on up to ``workers`` workers; failures come back as errors."""
        def run_one(job: tuple[Program, Sequence[str]]) -> list[TestRun] | SandboxError:
            try:
                return self.run(*job)
            except SandboxError as error:
                return error

        if len(jobs) <= 1 or self.workers == 1:
            return [run_one(job) for job in jobs]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(jobs)), thread_name_prefix="sandbox") as executor:
            return list(executor.map(run_one, jobs))

    def _checkout(self) -> _Worker:
        if self._closed:
            raise SandboxError("the sandbox pool is closed")
        self._slots.acquire()
        try:
            worker = self._idle.get_nowait()
        except queue.Empty:
            worker = None
        if worker is not None and worker.alive():
            return worker
        if worker is not None:
            self._discard(worker, release=False)
        try:
            return self._start_worker()
        except BaseException:
            self._slots.release()
            raise

    def _checkin(self, worker: _Worker) -> None:
        self._idle.put(worker)
        self._slots.release()

    def _discard(self, worker: _Worker, release: bool = True) -> None:
        worker.kill()
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)
            self.restarts += 1
        if release:
            self._slots.release()

    def _start_worker(self) -> _Worker:
        uid = SANDBOX_UID_BASE + (os.getpid() % 4_000_000) * 256 + next(_uid_slots) % 256 \
            if os.geteuid() == 0 else None
        worker = _spawner.start_worker(self.isolation_mode, uid)
        with self._lock:
            self._all.append(worker)
            first = self._isolation is None
            self._isolation = worker.isolation
        if first:
            logger.info("sandbox isolation: %s (%s)", worker.isolation["mode"],
                        "; ".join(f"{key}: {value}" for key, value in worker.isolation["layers"].items()))
            for note in worker.isolation.get("notes", []):
                logger.warning("sandbox: %s", note)
        return worker

    def close(self) -> None:
        """Stop every worker and remove its processes and files."""
        if self._closed or os.getpid() != self._owner_pid:
            return
        self._closed = True
        with self._lock:
            workers, self._all = list(self._all), []
        for worker in workers:
            worker.close()


@atexit.register
def _close_live_pools() -> None:
    for pool in list(_live_pools):
        pool.close()
