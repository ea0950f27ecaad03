"""Test-session settings: one torch thread per xdist worker (and per subprocess a test starts).

``pytest -n 2`` runs two workers on two cores; with torch's default of one thread per core each,
plus the training subprocesses of the zoo and resume tests, the OpenMP threads oversubscribe
the cores and spin against each other (the suite ran 2x slower).
"""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the subprocesses tests start
    torch.set_num_threads(1)
