"""A workload of one's own for hpcbench: a small CNN (nets.py) and a generated data set (data.py).
See ../README.md for the commands."""
