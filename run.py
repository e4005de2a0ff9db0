"""Hydra entry point: `python run.py [overrides]`, `python run.py -m algo=gigpo,grpo env=webshop`.

Composition validates every key and type against gigpo.config's dataclasses; ``check`` then
validates values. The training itself is ``gigpo.train.train(cfg) -> float``.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from gigpo.config import check, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    check(cfg)
    with open_dict(cfg):
        cfg.run_dir = cfg.run_dir or HydraConfig.get().runtime.output_dir
    from gigpo.train import evaluate, train

    if cfg.mode == "eval":
        return evaluate(cfg)["val/success"]
    return train(cfg)


if __name__ == "__main__":
    main()
