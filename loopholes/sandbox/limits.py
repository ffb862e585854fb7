"""Resource limits of one sandboxed submission."""

from __future__ import annotations

from dataclasses import asdict, dataclass

ISOLATION_MODES = ("auto", "namespaces", "basic")


@dataclass(frozen=True)
class SandboxLimits:
    """Limits applied to every test of a submission, and to the submission as a whole.

    Attributes:
        cpu_per_test: CPU seconds of one test (all threads). The kernel limit
            (RLIMIT_CPU) has whole-second steps, so a test may run up to the next
            whole second before it is killed; any test that used more than this
            value fails.
        wall_per_test: Wall-clock seconds of one test; the process is killed then.
        cpu_per_submission: CPU seconds over all tests of a submission; tests
            after the budget is spent are not run and count as failed.
        wall_per_submission: Wall-clock seconds over all tests of a submission.
        memory_mb: Address-space limit (RLIMIT_AS) in MiB.
        file_size_mb: Largest file the code may write (RLIMIT_FSIZE) in MiB.
        max_output_bytes: Stdout (or stderr) bytes kept per test; more kills the test.
        max_processes: Tasks (processes and threads) the code may run at once,
            enforced with RLIMIT_NPROC where tests run under their own uid.
        audit_hook: Install the in-process audit hook. Tests turn it off to
            check that the kernel layers hold on their own; keep it on.
    """

    cpu_per_test: float = 2.0
    wall_per_test: float = 6.0
    cpu_per_submission: float = 10.0
    wall_per_submission: float = 30.0
    memory_mb: int = 512
    file_size_mb: int = 16
    max_output_bytes: int = 1 << 20
    max_processes: int = 16
    audit_hook: bool = True

    def __post_init__(self) -> None:
        for name in ("cpu_per_test", "wall_per_test", "cpu_per_submission", "wall_per_submission"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value <= 3600:
                raise ValueError(f"{name} must be a number of seconds in (0, 3600], got {value!r}")
        if not isinstance(self.memory_mb, int) or self.memory_mb < 64:
            raise ValueError(f"memory_mb must be an integer of at least 64 MiB (the interpreter needs it), "
                             f"got {self.memory_mb!r}")
        if not isinstance(self.file_size_mb, int) or self.file_size_mb < 1:
            raise ValueError(f"file_size_mb must be a positive integer, got {self.file_size_mb!r}")
        if not isinstance(self.max_output_bytes, int) or self.max_output_bytes < 1024:
            raise ValueError(f"max_output_bytes must be an integer of at least 1024, got {self.max_output_bytes!r}")
        if not isinstance(self.max_processes, int) or self.max_processes < 1:
            raise ValueError(f"max_processes must be a positive integer, got {self.max_processes!r}")

    def to_request(self) -> dict:
        """Return the limits in the form the worker reads (bytes, not MiB)."""
        values = asdict(self)
        values["memory_bytes"] = self.memory_mb << 20
        values["file_size_bytes"] = self.file_size_mb << 20
        return values
