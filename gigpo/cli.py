"""Hydra entry point of the training job: ``gigpo-train [overrides]`` once installed, or
``python run.py [overrides]`` from a checkout (run.py only calls ``main`` here);
``gigpo-train -m algo=gigpo,grpo env=webshop`` for a multirun.

The configs are read through the package (``pkg://gigpo.conf``), never from a path beside the
source, so an installed wheel runs from any directory. The job is named ``run`` (conf/config.yaml),
so its log is ``run.log`` whichever of the two commands started it.

Composition validates every key and type against gigpo.config's dataclasses; ``check`` then
validates values, before any run folder is kept. The training itself is ``gigpo.train.train(cfg) -> float``.

Output folders (conf/config.yaml): an explicit ``run_dir=PATH`` is used as is; otherwise
``runs/<experiment_name>/<overrides>``, with any ``/`` in an override value replaced by ``_`` so that
``model.path=/a/b`` names one folder, not a tree.
"""

import shutil
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from gigpo.config import register_configs
from gigpo.checks import check
from gigpo.console import register_help
from gigpo.tracking import redact_files

register_configs()
register_help()  # renders `--help` (hydra.help.template in conf/config.yaml)
# Used by hydra.run.dir / hydra.sweep.subdir in conf/config.yaml.
OmegaConf.register_new_resolver("gigpo_run_dir", lambda run_dir, default: run_dir or default, replace=True)
OmegaConf.register_new_resolver("gigpo_job_name", lambda overrides: job_name(overrides), replace=True)


def job_name(overrides) -> str:
    """A job's folder name: its overrides of settings, sorted, as ``key=value`` joined by ``__``.

    Keys that are not settings (``gigpo.config.not_in_name``: budgets such as ``train.iterations``,
    logging and execution keys) are left out, so a run extended with a larger ``train.iterations``
    finds (and resumes) its own folder; ``/`` and ``,`` in values become ``_`` and ``-`` (a path
    never nests folders, and no folder name holds a comma). "default" when nothing is left.
    """
    from gigpo.config import not_in_name

    kept = []
    for override in overrides:
        key, _, value = str(override).lstrip("+~").partition("=")
        if not_in_name(key):
            continue
        kept.append(f"{key}={value.replace('/', '_').replace(',', '-')}")
    return "__".join(sorted(kept)) or "default"


def _remove_if_only_hydra(folder: Path) -> None:
    """Hydra creates the output folder (with .hydra/ and a log) before main runs; a config that fails
    its check must not leave it behind. Only Hydra's own files go, then the folders left empty
    (never above the current directory); a folder holding anything else keeps it."""
    if not folder.is_dir() or any(p.name not in (".hydra", "run.log") for p in folder.iterdir()):
        return
    shutil.rmtree(folder / ".hydra", ignore_errors=True)
    (folder / "run.log").unlink(missing_ok=True)
    cwd = Path.cwd().resolve()
    for empty in [folder.resolve(), *folder.resolve().parents]:
        if empty == cwd or cwd not in empty.parents or any(empty.iterdir()):
            break
        empty.rmdir()


def _evaluate_checkpoint(cfg: DictConfig, output_dir: Path) -> float:
    """mode=eval checkpoint=RUN: evaluate under the run's own config (``gigpo.train.evaluate``); the results
    and this evaluation's log (eval.log) go into the evaluated run's folder, and Hydra's own output folder
    (runs/<experiment>/checkpoint=...,mode=eval) is removed unless ``run_dir`` named it."""
    from gigpo.train import evaluate

    try:
        return evaluate(cfg, list(HydraConfig.get().overrides.task))["val/success"]
    finally:
        log_file = output_dir / "run.log"
        path = Path(cfg.checkpoint)
        run_folder = path if path.is_dir() else path.parent.parent
        if cfg.run_dir is None and log_file.exists() and run_folder.is_dir():
            shutil.copyfile(log_file, run_folder / "eval.log")
            _remove_if_only_hydra(output_dir)


@hydra.main(version_base="1.3", config_path="pkg://gigpo.conf", config_name="config")
def main(cfg: DictConfig) -> float:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    redact_files(output_dir / ".hydra")  # Hydra wrote the overrides verbatim: no URL password stays on disk
    try:
        check(cfg)
    except ValueError:
        _remove_if_only_hydra(output_dir)
        raise
    if cfg.mode == "eval" and cfg.checkpoint is not None and str(cfg.checkpoint).lower() != "none":
        return _evaluate_checkpoint(cfg, output_dir)
    with open_dict(cfg):
        cfg.run_dir = cfg.run_dir or str(output_dir)
    from gigpo.train import evaluate_as_loaded, train

    if cfg.mode == "eval":  # no checkpoint (a checkpoint was handled above): the model as loaded
        return evaluate_as_loaded(cfg)["val/success"]
    if cfg.sweep.storage is not None:  # a trial launched by hydra/sweeper=optuna_gigpo
        from hydra_plugins.gigpo_optuna_sweeper.sweeper import run_trial_job

        return run_trial_job(cfg)
    return train(cfg)


if __name__ == "__main__":
    main()
