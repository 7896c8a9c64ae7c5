"""Running sweeps on Slurm: per-job resources, submission through submitit, monitoring, status."""
