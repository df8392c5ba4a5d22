import os

# Tests run on the CPU with one device; tests that need several devices start a subprocess.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
# The CLI keeps compiled programs on disk between runs; tests stay hermetic without it.
os.environ.setdefault("UGCN_COMPILATION_CACHE", "off")
