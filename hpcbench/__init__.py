"""hpcbench: scaling studies of distributed deep-learning training on Slurm clusters."""

__version__ = "0.1.0"
