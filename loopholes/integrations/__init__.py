"""Adapters to other tools: TRL reward functions, verl export and Inspect tasks."""
