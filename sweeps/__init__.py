"""Optuna sweeps over gigpo's training config (group size N, step-advantage weight w, ...).

Run ``python -m sweeps.run sweep=group_size_weight env=sokoban_easy n_trials=20``; see sweeps.run for
the options, resume and storage, sweeps.objective for the objective and pruning, and
conf/sweep/group_size_weight.yaml for the search-space format. The same study runs as Hydra jobs with
``python run.py -m hydra/sweeper=optuna_gigpo`` (hydra_plugins/gigpo_optuna_sweeper/, over this code).
"""
