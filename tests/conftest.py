import os

# Tests run on the CPU with one device; tests that need several devices start a subprocess.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
