"""Hydra sweeper plugin ``hydra/sweeper=optuna_gigpo``: gigpo's Optuna sweep (sweeps/) under ``run.py -m``.

``hydra_plugins`` is a namespace package (no ``__init__.py``), the place Hydra scans for plugins.
"""
