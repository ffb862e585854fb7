"""loopholes: vulnerability games for finding out whether RL teaches a language model to exploit its reward.

The public surface:

- :func:`loopholes.games.make_game` builds one of the four games by name;
- :func:`loopholes.metrics.summarize` computes ITP, the exploit ratio and the
  game's extra rates over a set of outcomes, with 95% confidence intervals;
- the ``loopholes`` command trains, evaluates, scores and reports.
"""

__version__ = "0.1.0"
