"""A Hydra application that knows nothing of hpcbench: its own config, a custom resolver, a
return value. The launcher tests run it with Hydra's basic launcher and with hydra/launcher=slurm
and expect the same directories, files and values."""
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

OmegaConf.register_new_resolver("twice", lambda value: 2 * int(value), replace=True)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> int:
    if cfg.fail:
        raise RuntimeError(f"asked to fail (x={cfg.x})")
    result = cfg.x * 100 + cfg.doubled
    job = HydraConfig.get()
    Path(job.runtime.output_dir, "result.txt").write_text(f"{job.job.name} {job.job.num} {result}\n")
    return result


if __name__ == "__main__":
    main()
