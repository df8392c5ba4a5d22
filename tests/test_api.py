"""The public API: every advertised name resolves, and importing ugcn stays light."""
import subprocess
import sys

import ugcn


def test_every_public_name_resolves():
    missing = [name for name in ugcn.__all__ if not hasattr(ugcn, name)]
    assert missing == []
    assert ugcn.refine_volume is __import__("ugcn.refine", fromlist=["x"]).refine_volume


def test_import_ugcn_does_not_import_jax():
    code = "import sys, ugcn; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
