"""The experiment: a YAML config -> a grid of runs -> cached stages -> results and report.

Modules: ``config`` (the experiment config), ``presets`` (the embedded demo and quick configs), and the runner's
plan, stages, executors and aggregation. Import what you need from the submodule that defines it.
"""
