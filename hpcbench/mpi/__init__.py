"""MPI ranks: who is who (topology.py), the torch.distributed process group over them
(process_group.py), starting them (launch.py), and what a failing rank leaves behind (failures.py)."""
