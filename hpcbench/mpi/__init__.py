"""MPI ranks: who is who and which MPI (topology.py), the torch.distributed process group over them
(process_group.py), starting them (launch.py), and what a failing rank says (failures.py; its
records: hpcbench/failure_records.py)."""
