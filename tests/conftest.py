"""Test-wide setup: CPU only, and ``tests/`` importable so shared helpers (``wan_torch_fixtures``) load anywhere."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))
