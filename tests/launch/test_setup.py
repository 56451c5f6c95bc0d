"""launch/setup.sh with a fake .venv/bin/python that records its calls: torch (the pyproject pin) comes from the
CPU-wheel index by default, REHYAT_TORCH_INDEX changes or (empty) drops that index, an unreachable index is
skipped with a note, pip's output stays in .venv/setup.log unless a step fails, and a finished setup is not
repeated."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Plays the venv's python: records its arguments; "-" is the index probe (reads its script from stdin).
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
if [ "$1" = - ]; then cat >/dev/null; exit "${PROBE_RC:-0}"; fi
if [ -n "${FAIL_ON:-}" ] && [[ "$*" == *"$FAIL_ON"* ]]; then echo "pip says: no matching distribution"; exit 1; fi
echo "pip progress output that setup.sh must keep out of the terminal"
"""


@pytest.fixture()
def repo(tmp_path) -> Path:
  r = tmp_path / "repo"
  (r / "launch").mkdir(parents=True)
  shutil.copy2(ROOT / "launch" / "setup.sh", r / "launch" / "setup.sh")
  shutil.copy2(ROOT / "pyproject.toml", r / "pyproject.toml")
  python = r / ".venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  python.write_text(FAKE_PYTHON)
  python.chmod(python.stat().st_mode | stat.S_IXUSR)
  return r


def setup(repo: Path, **env) -> tuple[subprocess.CompletedProcess, list[str]]:
  calls = repo / "calls.txt"
  full_env = {k: v for k, v in os.environ.items() if k != "REHYAT_TORCH_INDEX"}
  full_env.update(CALLS=str(calls), PYTHON=sys.executable, **env)
  done = subprocess.run(["bash", "launch/setup.sh"], cwd=repo, env=full_env, capture_output=True, text=True,
                        timeout=60, check=False)
  return done, calls.read_text().splitlines() if calls.exists() else []


def torch_pin() -> str:
  pins = [line.strip().strip('",') for line in (ROOT / "pyproject.toml").read_text().splitlines()
          if line.strip().startswith('"torch==')]
  assert len(pins) == 1
  return pins[0]


def test_torch_comes_from_the_cpu_index_and_the_install_is_quiet(repo):
  done, calls = setup(repo)
  assert done.returncode == 0, done.stderr
  assert f"-m pip install -q {torch_pin()} --extra-index-url {CPU_INDEX}" in calls
  assert calls[-1] == "-m pip install -q -e .[test]"
  assert "pip progress" not in done.stdout + done.stderr and done.stderr == ""
  assert "pip progress" in (repo / ".venv" / "setup.log").read_text()
  # Done once: a second run finds the stamp and installs nothing.
  again, calls_again = setup(repo)
  assert again.returncode == 0 and again.stdout == "" and calls_again == calls


@pytest.mark.parametrize("index,expected", [("https://mirror.example/cpu", "--extra-index-url https://mirror.example/cpu"),
                                            ("", None)])
def test_torch_index_setting(repo, index, expected):
  done, calls = setup(repo, REHYAT_TORCH_INDEX=index)
  assert done.returncode == 0, done.stderr
  torch_calls = [c for c in calls if torch_pin() in c]
  assert torch_calls == [f"-m pip install -q {torch_pin()}" + (f" {expected}" if expected else "")]


def test_unreachable_index_is_skipped_with_a_note(repo):
  done, calls = setup(repo, PROBE_RC="1")
  assert done.returncode == 0, done.stderr
  assert f"-m pip install -q {torch_pin()}" in calls
  assert "cannot be reached" in done.stderr and "REHYAT_TORCH_INDEX" in done.stderr


def test_a_failing_step_prints_its_log(repo):
  done, _ = setup(repo, FAIL_ON="-e .[test]")
  assert done.returncode == 1
  assert "pip says: no matching distribution" in done.stderr and "setup: failed" in done.stderr
  assert not list((repo / ".venv").glob(".installed-*"))  # the next run tries again
