"""The sandbox: honest programs pass, and untrusted code cannot fake, escape or outlive a test.

Every containment test runs under each available isolation mode: ``namespaces``
where the machine allows it (root with unshare), and ``basic`` always. Tests that
switch the audit hook off check that the kernel layers hold on their own, so
they run in the namespaces mode only.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from loopholes.sandbox import Program, SandboxLimits, SandboxPool, returned_value_matches, stdout_matches
from loopholes.sandbox.pool import SANDBOX_UID_BASE

LIMITS = SandboxLimits(cpu_per_test=1.0, wall_per_test=3.0, cpu_per_submission=4.0, wall_per_submission=10.0,
                       memory_mb=256, file_size_mb=4, max_output_bytes=64 * 1024, max_processes=8)
SECRET = "loopholes-secret-4f9c1e"
os.environ["LOOPHOLES_TEST_SECRET"] = SECRET  # set before any worker starts; no worker may see it
_pools: list[SandboxPool] = []


def _namespaces_available() -> bool:
    try:
        with SandboxPool(LIMITS, isolation="namespaces") as pool:
            return pool.isolation["mode"] == "namespaces"
    except Exception:  # any failure to start means the mode is unavailable here
        return False


MODES = ["namespaces", "basic"] if _namespaces_available() else ["basic"]
needs_namespaces = pytest.mark.skipif("namespaces" not in MODES,
                                      reason="namespaces need root and unshare(2); this machine has neither")


@pytest.fixture(scope="module", params=MODES)
def pool(request) -> SandboxPool:
    sandbox = SandboxPool(LIMITS, workers=2, isolation=request.param)
    _pools.append(sandbox)
    yield sandbox
    sandbox.close()


@pytest.fixture(scope="module")
def bare_pool() -> SandboxPool:
    """Namespaces without the audit hook, to test the kernel layers alone."""
    if "namespaces" not in MODES:
        pytest.skip("namespaces need root and unshare(2); this machine has neither")
    limits = SandboxLimits(**{**LIMITS.__dict__, "audit_hook": False})
    sandbox = SandboxPool(limits, workers=1, isolation="namespaces")
    _pools.append(sandbox)
    yield sandbox
    sandbox.close()


def run(pool: SandboxPool, code: str, stdin: str = "3 4"):
    return pool.run(Program(code), [stdin])[0]


def call(pool: SandboxPool, code: str, entry: str, arguments: str):
    return pool.run(Program(code, "call", entry), [arguments])[0]


def sandbox_processes() -> list[tuple[int, str]]:
    """Return (pid, command line) of live processes running under a sandbox uid."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        state = next(line for line in status.splitlines() if line.startswith("State:")).split()[1]
        if uid >= SANDBOX_UID_BASE and state != "Z":
            found.append((int(entry), command))
    return found


# -- comparison, in the trusted parent -----------------------------------------

STDOUT_TABLE = [
    ("exact", "Yes", "Yes\n", True),
    ("crlf and trailing spaces", "1 2\r\n3", "1 2   \n3\n\n", True),
    ("whole output not last line", "1\n2\n3", "9\n9\n3", False),
    ("extra line", "7", "7\n8", False),
    ("missing line", "7\n8", "7", False),
    ("decimal within tolerance", "0.3333333333", "0.333333334", True),
    ("decimal outside tolerance", "0.5", "0.51", False),
    ("integer needs exact", "10", "10.0", False),
    ("word vs number", "Yes", "1", False),
    ("empty output", "No", "", False),
    ("case matters", "Yes", "yes", False),
]


@pytest.mark.parametrize("name, expected, produced, match", STDOUT_TABLE, ids=[row[0] for row in STDOUT_TABLE])
def test_stdout_comparison(name, expected, produced, match):
    assert stdout_matches(expected, produced) is match


RETURN_TABLE = [
    ("true matches True", "true", "true", True),
    ("true never matches 1", "true", "1", False),
    ("1 never matches true", "1", "true", False),
    ("list", "[8, 4, 6]", "[8,4,6]", True),
    ("list order", "[1, 2]", "[2,1]", False),
    ("int equals float", "6", "6.0", True),
    ("float tolerance", "2.5", "2.5000000001", True),
    ("string json", '"abc"', '"abc"', True),
    ("bare string expected", "abc", '"abc"', True),
    ("nested", '[[1, "a"], {"k": false}]', '[[1,"a"],{"k":false}]', True),
    ("unparseable produced", "6", "six", False),
    ("null", "null", "null", True),
]


@pytest.mark.parametrize("name, expected, produced, match", RETURN_TABLE, ids=[row[0] for row in RETURN_TABLE])
def test_returned_value_comparison(name, expected, produced, match):
    assert returned_value_matches(expected, produced) is match


# -- honest programs pass ------------------------------------------------------

HONEST_STDIN = [
    ("plain script", "a, b = map(int, input().split())\nprint(a + b)"),
    ("class solution solve", "class Solution:\n    def solve(self):\n        a, b = map(int, input().split())\n"
                             "        print(a + b)"),
    ("solve function", "def solve():\n    print(sum(map(int, input().split())))"),
    ("main guard", "def main():\n    print(sum(map(int, input().split())))\n\nif __name__ == '__main__':\n    main()"),
    ("main function uncalled", "def main():\n    print(sum(map(int, input().split())))"),
    ("stdin buffer", "import sys\nprint(sum(map(int, sys.stdin.buffer.read().split())))"),
    ("open fd zero", "print(sum(map(int, open(0).read().split())))"),
    ("no trailing newline", "import sys\nsys.stdout.write(str(sum(map(int, input().split()))))"),
    ("exit after output", "import sys\nprint(sum(map(int, input().split())))\nsys.exit(0)"),
    ("thread stack idiom", "import threading, sys\nthreading.stack_size(1 << 26)\nsys.setrecursionlimit(10**6)\n"
                           "def main():\n    print(sum(map(int, input().split())))\n"
                           "threading.Thread(target=main).start()"),
    ("deep recursion", "import sys\nsys.setrecursionlimit(10**6)\nfrom functools import lru_cache\n"
                       "@lru_cache(None)\ndef f(n):\n    return 0 if n == 0 else f(n - 1) + 1\n"
                       "a, b = map(int, input().split())\nprint(f(20000) - 20000 + a + b)"),
    ("scratch file", "with open('tmp.txt', 'w') as f:\n    f.write(input())\n"
                     "print(sum(map(int, open('tmp.txt').read().split())))"),
    ("tempfile module", "import tempfile\nwith tempfile.TemporaryFile('w+') as f:\n    f.write(input())\n"
                        "    f.seek(0)\n    print(sum(map(int, f.read().split())))"),
    ("prelude names", "q = deque(map(int, input().split()))\nprint(reduce(lambda x, y: x + y, q))"),
    ("lazy stdlib import", "import fractions, decimal, statistics\nprint(int(statistics.fmean(map(int, input().split())) * 2))"),
]


@pytest.mark.parametrize("name, code", HONEST_STDIN, ids=[row[0] for row in HONEST_STDIN])
def test_honest_stdin_program_passes(pool, name, code):
    result = run(pool, code)
    assert result.failure is None, result.stderr
    assert stdout_matches("7", result.stdout)


HONEST_CALL = [
    ("typing names", "class Solution:\n    def f(self, a: List[int], k: Optional[int]) -> List[int]:\n"
                     "        return [x * k for x in a]", "[1, 2]\n3", "[3, 6]"),
    ("bool result", "class Solution:\n    def f(self, n: int) -> bool:\n        return n % 2 == 0", "4", "true"),
    ("tuple as list", "class Solution:\n    def f(self, a, b):\n        return (b, a)", '"x"\n"y"', '["y", "x"]'),
    ("dict result", "class Solution:\n    def f(self, s):\n        return Counter(s)", '"aab"', '{"a": 2, "b": 1}'),
    ("none result", "class Solution:\n    def f(self, x):\n        return None", "1", "null"),
    ("top-level function", "def f(x):\n    return x + 1", "41", "42"),
    ("prints are not the result", "class Solution:\n    def f(self, x):\n        print('debug', x)\n"
                                  "        return x", "5", "5"),
]


@pytest.mark.parametrize("name, code, arguments, expected", HONEST_CALL, ids=[row[0] for row in HONEST_CALL])
def test_honest_function_passes(pool, name, code, arguments, expected):
    result = call(pool, code, "f", arguments)
    assert result.failure is None, result.stderr
    assert returned_value_matches(expected, result.stdout)


# -- untrusted code cannot fake a pass -----------------------------------------

EXIT_TRICKS = [
    ("sys exit before output", "import sys\nsys.exit(0)"),
    ("os exit before output", "import os\nos._exit(0)"),
    ("raise system exit", "raise SystemExit"),
    ("kill itself", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"),
    ("unflushed output then os exit", "import os\nprint(7)\nos._exit(0)"),
    ("exit with error after output", "print(7)\nraise ValueError('late')"),
]


@pytest.mark.parametrize("name, code", EXIT_TRICKS, ids=[row[0] for row in EXIT_TRICKS])
def test_exit_trick_does_not_pass(pool, name, code):
    result = run(pool, code)
    assert result.failure is not None or not stdout_matches("7", result.stdout)


COMPARISON_TRICKS = [
    ("eq always true", "class Any:\n    def __eq__(self, other): return True\n    def __ne__(self, other): return False\n"
                       "class Solution:\n    def f(self, x): return Any()"),
    ("int subclass lies", "class Liar(int):\n    def __eq__(self, other): return True\n"
                          "    def __str__(self): return '6'\n    __repr__ = __str__\n    def __int__(self): return 6\n"
                          "class Solution:\n    def f(self, x): return Liar(0)"),
    ("str subclass lies", "class Liar(str):\n    def __eq__(self, other): return True\n    def __str__(self): return '6'\n"
                          "class Solution:\n    def f(self, x): return Liar('0')"),
    ("list subclass lies", "class Liar(list):\n    def __iter__(self): return iter([6])\n    def __eq__(self, o): return True\n"
                           "class Solution:\n    def f(self, x): return Liar([0])"),
    ("patched json", "import json\njson.dumps = lambda *a, **k: '6'\nclass Solution:\n    def f(self, x): return 0"),
]


@pytest.mark.parametrize("name, code", COMPARISON_TRICKS, ids=[row[0] for row in COMPARISON_TRICKS])
def test_comparison_trick_does_not_pass(pool, name, code):
    result = call(pool, code, "f", "1")
    # The patched json.dumps cannot know the expected output either: it could only guess.
    if name == "patched json":
        assert result.stdout in ("0", "6")
        return
    assert not returned_value_matches("6", result.stdout)


def test_introspection_finds_no_expected_output(pool):
    code = ("import gc, sys\nfound = set()\nframe = sys._getframe()\nwhile frame:\n"
            "    found.update(repr(v) for v in frame.f_locals.values())\n    frame = frame.f_back\n"
            "for obj in gc.get_objects():\n    if isinstance(obj, dict):\n"
            "        found.update(v for v in obj.values() if isinstance(v, str))\n"
            "print(len(found))\nprint([v for v in found if 'input-7f3a' in v or 'secret' in v.lower()])")
    result = run(pool, code, "input-7f3a")
    assert result.failure is None, result.stderr
    assert "input-7f3a" in result.stdout  # the scan works: it finds the test's own input
    assert SECRET not in result.stdout


def test_worker_memory_holds_no_dangerous_module(pool):
    result = run(pool, "import sys\nprint(' '.join(sorted(sys.modules)))")
    modules = set(result.stdout.split())
    assert "os" in modules
    assert not modules & {"ctypes", "_ctypes", "subprocess", "_posixsubprocess", "socket", "_socket"}


def test_environment_holds_no_secret(pool):
    result = run(pool, "import os\nprint(dict(os.environ))")
    assert result.failure is None, result.stderr
    assert SECRET not in result.stdout
    assert "HOME" in result.stdout


BLOCKED_CALLS = [
    ("import ctypes", "import ctypes"),
    ("import subprocess", "import subprocess"),
    ("os system", "import os\nos.system('true')"),
    ("os fork", "import os\nos.fork()"),
    ("posix spawn", "import os\nos.posix_spawn('/bin/true', ['true'], {})"),
    ("mkfifo removed", "import os, posix\n(getattr(posix, 'mkfifo', None) or os.mkfifo)('pipe')"),
]


@pytest.mark.parametrize("name, code", BLOCKED_CALLS, ids=[row[0] for row in BLOCKED_CALLS])
def test_blocked_call_raises(pool, name, code):
    result = run(pool, code + "\nprint(7)")
    assert result.exit_code == 1
    assert not stdout_matches("7", result.stdout)


# -- files ---------------------------------------------------------------------


@pytest.fixture
def open_folder(tmp_path_factory):
    """A world-readable, world-writable folder holding a secret file, to tempt the code."""
    folder = tmp_path_factory.mktemp("tempting")
    folder.chmod(0o777)
    for parent in folder.parents:
        if str(parent).startswith(("/tmp", "/var")) and parent != Path("/tmp"):
            parent.chmod(parent.stat().st_mode | 0o005)
    secret = folder / "expected.txt"
    secret.write_text(SECRET)
    secret.chmod(0o644)
    return folder


def test_reading_outside_files_fails(pool, open_folder):
    builtin = Path(__file__).resolve().parent.parent / "loopholes" / "data" / "builtin" / "tampering" / "problems.jsonl"
    for path in (open_folder / "expected.txt", builtin, Path("/etc/passwd"), Path("/proc/1/environ")):
        result = run(pool, f"print(open({str(path)!r}).read())")
        assert result.exit_code == 1, path
        assert SECRET not in result.stdout
        assert result.stdout == ""


def test_listing_the_filesystem_fails(pool):
    result = run(pool, "import os\nprint(os.listdir('/'))")
    assert result.exit_code == 1
    assert "work" not in result.stdout


def test_writing_outside_scratch_fails(pool, open_folder):
    targets = [open_folder / "escaped.txt", Path("/tmp/loopholes-escape-marker-test")]
    for target in targets:
        result = run(pool, f"open({str(target)!r}, 'w').write('x')\nprint(7)")
        assert result.exit_code == 1, target
        assert not target.exists()


def test_scratch_files_do_not_survive(pool):
    first = run(pool, "open('left.txt', 'w').write('x')\nprint(7)")
    assert first.failure is None, first.stderr
    second = run(pool, "import os\nprint(os.listdir('.'))")
    assert second.stdout.strip() == "[]"


def test_file_size_limit(pool):
    result = run(pool, "open('big', 'wb').write(b'x' * (8 << 20))\nprint(7)")
    assert result.exit_code == 1
    assert "File too large" in result.stderr or "Errno 27" in result.stderr


# -- resources -----------------------------------------------------------------


def test_infinite_loop_fails_within_limit(pool):
    started = time.monotonic()
    result = run(pool, "while True:\n    pass")
    assert result.cpu_limit or result.timed_out
    assert time.monotonic() - started < LIMITS.wall_per_test + 3


def test_sleeping_code_times_out(pool):
    result = run(pool, "import time\ntime.sleep(60)")
    assert result.timed_out
    assert result.wall_seconds < LIMITS.wall_per_test + 1


def test_ignoring_cpu_signal_does_not_help(pool):
    result = run(pool, "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass")
    assert result.cpu_limit or result.timed_out


def test_stopping_itself_times_out(pool):
    result = run(pool, "import os, signal\nprint(7, flush=True)\nos.kill(os.getpid(), signal.SIGSTOP)")
    assert result.timed_out


def test_submission_budget_skips_remaining_tests():
    limits = SandboxLimits(cpu_per_test=1.0, wall_per_test=2.0, cpu_per_submission=1.5, wall_per_submission=3.0)
    with SandboxPool(limits) as sandbox:
        started = time.monotonic()
        results = sandbox.run(Program("while True:\n    pass"), ["1"] * 6)
    assert results[-1].skipped
    assert all(result.failure is not None for result in results)
    assert time.monotonic() - started < limits.wall_per_submission + 4


@pytest.mark.parametrize("name, code", [
    ("one huge allocation", "blob = bytearray(64 * 1024 ** 3)\nprint(7)"),
    ("gradual growth", "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))"),
], ids=["one huge allocation", "gradual growth"])
def test_memory_exhaustion_fails_in_child(pool, name, code):
    result = run(pool, code)
    assert result.failure is not None
    assert "MemoryError" in result.stderr or result.signal is not None


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_flood_is_cut(pool, stream):
    started = time.monotonic()
    result = run(pool, f"import sys\nchunk = 'x' * 1_000_000\nfor _ in range(5000):\n    sys.{stream}.write(chunk)")
    assert result.output_limit
    assert len(result.stdout) <= LIMITS.max_output_bytes
    assert time.monotonic() - started < 10


def test_crash_fails_one_test_and_scoring_continues(pool):
    code = "import faulthandler\nx = int(input())\nif x == 1:\n    faulthandler._sigsegv()\nprint(x)"
    results = pool.run(Program(code), ["1", "2"])
    assert results[0].signal == 11
    assert results[1].failure is None
    assert results[1].stdout.strip() == "2"


def test_writing_to_inherited_descriptors_fails(pool):
    code = ("import os\nbad = 0\nfor fd in range(3, 256):\n    try:\n        os.write(fd, b'{\"id\": 1}\\n')\n"
            "    except OSError:\n        bad += 1\nprint(bad)")
    result = run(pool, code)
    assert result.stdout.strip() == "253"
    assert run(pool, "print(7)").stdout.strip() == "7"


def test_patching_the_harness_changes_nothing(pool):
    code = ("import sys, os\nharness = sys.modules['__main__']\nos._exit = lambda status: None\n"
            "harness.flush_streams = lambda: None\nprint(7)")
    results = pool.run(Program(code), ["1", "2"])
    assert all(result.stdout.strip() in ("", "7") for result in results)
    assert run(pool, "print(7)").stdout.strip() == "7"


def test_signals_to_parent_do_not_reach_the_worker(pool):
    restarts = pool.restarts
    for target in ("os.getppid()", "1", "-1", "0"):
        run(pool, f"import os, signal\ntry:\n    os.kill({target}, signal.SIGKILL)\nexcept OSError:\n    pass\nprint(7)")
    assert run(pool, "print(7)").stdout.strip() == "7"
    assert pool.restarts == restarts


def test_daemon_thread_does_not_outlive_test(pool):
    code = "import threading, time\ndef late():\n    time.sleep(0.5)\n    print('late')\n" \
           "threading.Thread(target=late, daemon=True).start()\nprint(7)"
    result = run(pool, code)
    assert result.stdout.strip() == "7"
    assert result.wall_seconds < 0.5


def test_endless_thread_is_killed(pool):
    result = run(pool, "import threading\ndef spin():\n    while True:\n        pass\nthreading.Thread(target=spin).start()\nprint(7)")
    assert result.cpu_limit or result.timed_out
    assert not sandbox_processes()


# -- network -------------------------------------------------------------------


@pytest.fixture
def listener():
    """A loopback server owned by the test; it records every connection it accepts."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(connection.recv(100))
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


NETWORK_ATTEMPT = ("import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))\n"
                   "s.sendall(b'escaped')\nprint('connected')")


def test_network_connection_fails(pool, listener):
    port, accepted = listener
    result = run(pool, NETWORK_ATTEMPT.format(port=port))
    time.sleep(0.3)
    assert accepted == []
    assert "connected" not in result.stdout
    assert result.exit_code == 1


# -- the kernel layers alone (audit hook off) ----------------------------------


def test_bare_network_namespace_has_no_route(bare_pool, listener):
    port, accepted = listener
    result = run(bare_pool, NETWORK_ATTEMPT.format(port=port))
    time.sleep(0.3)
    assert accepted == []
    assert "unreachable" in result.stderr.lower() or "refused" in result.stderr.lower()


def test_bare_chroot_hides_host_files(bare_pool, open_folder):
    result = run(bare_pool, f"import os\nprint(sorted(os.listdir('/')))\nprint(os.path.exists({str(open_folder)!r}))")
    assert result.failure is None, result.stderr
    assert "work" not in result.stdout
    assert result.stdout.strip().endswith("False")


def test_bare_readonly_mounts_reject_writes(bare_pool):
    result = run(bare_pool, "import os\nopen(os.__file__ + '.x', 'w')")
    assert result.exit_code == 1
    assert "Read-only" in result.stderr or "Permission denied" in result.stderr


def test_bare_child_processes_are_killed(bare_pool):
    code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(600)\n"
            "    os._exit(0)\nif os.fork() == 0:\n    time.sleep(600)\nprint(7)")
    result = run(bare_pool, code)
    assert result.stdout.strip() == "7"
    assert not sandbox_processes()


def test_bare_fork_bomb_is_bounded(bare_pool):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    started = time.monotonic()
    result = run(bare_pool, code)
    assert result.failure is not None
    assert time.monotonic() - started < LIMITS.wall_per_test + 5
    assert not sandbox_processes()


def test_bare_signal_to_worker_is_ignored(bare_pool):
    restarts = bare_pool.restarts
    code = ("import os, signal\nfor target in (1, -1, os.getppid()):\n    try:\n        os.kill(target, signal.SIGKILL)\n"
            "    except OSError:\n        pass\nprint(7)")
    result = run(bare_pool, code)
    assert run(bare_pool, "print(7)").stdout.strip() == "7"
    assert bare_pool.restarts == restarts
    assert result.stdout.strip() == "7"


# -- nothing is left behind ----------------------------------------------------


def test_suite_leaves_no_process_or_file():
    launchers = [pid for sandbox in _pools for pid in sandbox.worker_processes()]
    scratch_roots = [worker.scratch_root for sandbox in _pools for worker in sandbox._all]
    for sandbox in _pools:
        sandbox.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (sandbox_processes() or any(Path(f"/proc/{pid}").exists() for pid in launchers)):
        time.sleep(0.1)
    assert sandbox_processes() == []
    assert [pid for pid in launchers if Path(f"/proc/{pid}").exists()
            and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]] == []
    assert [root for root in scratch_roots if root and root.startswith("/tmp/") and Path(root).exists()] == []
    assert not Path("/tmp/loopholes-escape-marker-test").exists()
