"""Run the command line as ``python -m loopholes``."""

from loopholes.cli import app

app()
