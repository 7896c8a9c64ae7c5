"""One training run: the loop (trainer.py) and its components: the device (device.py), the
step and its numerics (step.py), optimizer and schedule (optim.py), stop signals (signals.py),
checkpoints (checkpoint.py), whether a run directory can be continued (continuation.py)
and the run's record in its directory (record.py)."""
