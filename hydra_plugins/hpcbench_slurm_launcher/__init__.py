"""hpcbench's Slurm launcher for Hydra: `hydra/launcher=slurm`."""
