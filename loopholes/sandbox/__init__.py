"""Execution of untrusted code for the reward-tampering game.

The public surface:

- :class:`SandboxPool` runs a :class:`Program` on test inputs in isolated
  worker processes and returns one :class:`TestRun` per input;
- :class:`SandboxLimits` contains the time, memory, file and output limits;
- :func:`stdout_matches` and :func:`returned_value_matches` compare a run's
  output with the expected output, in the trusted parent.

docs/sandbox.md describes the containment layers and their fallbacks.
"""

from loopholes.sandbox.compare import normalise_text, returned_value_matches, stdout_matches, values_equal
from loopholes.sandbox.limits import ISOLATION_MODES, SandboxLimits
from loopholes.sandbox.pool import Program, SandboxError, SandboxPool, TestRun

__all__ = ["ISOLATION_MODES", "Program", "SandboxError", "SandboxLimits", "SandboxPool", "TestRun",
           "normalise_text", "returned_value_matches", "stdout_matches", "values_equal"]
