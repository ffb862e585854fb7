"""Experiments: emergence, zero-shot transfer, catalysis, distillation and persistence.

A YAML config (:mod:`loopholes.experiments.config`) describes the games, the
model, the seeds and the sizes; :func:`run_experiment` checks it, runs each
part that has no result yet (:mod:`loopholes.experiments.plan`,
:mod:`loopholes.experiments.runner`), and :func:`analyze` computes the
analyses with intervals over seeds (:mod:`loopholes.experiments.analysis`,
:mod:`loopholes.experiments.aggregate`). The command line is
``loopholes experiment run CONFIG`` and ``loopholes experiment report DIR``.
"""

from loopholes.experiments.analysis import analyze
from loopholes.experiments.config import KINDS, ConfigError, ExperimentConfig, load_config, parse_config
from loopholes.experiments.runner import is_experiment_dir, plan_status, run_experiment

__all__ = ["KINDS", "ConfigError", "ExperimentConfig", "analyze", "is_experiment_dir", "load_config",
           "parse_config", "plan_status", "run_experiment"]
