"""Sub-commands of the ``ugcn`` command line (one module each, see :mod:`ugcn.cli`)."""
