"""``python -m rehyat_jax.train`` as a new user meets it: --help lists the configs and how to override fields,
and a missing argument, a mistyped field or an invalid config is one line on stderr, no traceback.

The subprocess cases fail before JAX is imported (about a second each); the ConfigError case runs in-process,
where it fails in the config checks before anything is built or compiled.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rehyat_jax.train import cli

ROOT = Path(__file__).resolve().parents[1]


def train_command(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "rehyat_jax.train", *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=120, check=False)


def one_line_error(stderr: str) -> str:
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in stderr and "FATAL" not in stderr, stderr
  return lines[0]


def test_help_lists_the_configs_and_how_to_override_fields():
  done = train_command("--help")
  assert done.returncode == 0, done.stderr
  text = done.stdout
  for path in sorted((ROOT / "configs").glob("*.py")):
    if path.name in ("__init__.py", "common.py"):
      continue
    first_line = ast.get_docstring(ast.parse(path.read_text())).strip().splitlines()[0]
    assert f"configs/{path.name}" in text and first_line in text, path.name
  assert "configs/tiny.py:finetune" in text          # the FILE:ARG form
  assert "--config.train.steps=3" in text             # how to override a field
  assert "configs/common.py" in text                  # where every field is documented


def test_no_argument_is_a_short_usage_message():
  done = train_command()
  assert done.returncode == 2
  assert one_line_error(done.stderr).startswith("usage: python -m rehyat_jax.train --config")


def test_mistyped_override_names_the_nearest_field():
  done = train_command("--config", "configs/tiny.py", "--config.train.stepz=3")
  assert done.returncode == 2
  line = one_line_error(done.stderr)
  assert "--config.train.stepz" in line and "did you mean --config.train.steps?" in line


def test_config_error_is_one_line(capsys, tmp_path):
  # train.steps=0 passes the command line and is refused by the config checks, before anything is built.
  code = cli.main(["--config", str(ROOT / "configs/tiny.py"), "--config.train.steps=0",
                   f"--config.workdir={tmp_path / 'run'}"])
  assert code == 2
  assert one_line_error(capsys.readouterr().err) == "error: train.steps must be >= 1, got 0"
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,message", [
    (["--config", "configs/tiny.py", "--config.trian.steps=3"], "config has no field 'trian'; did you mean "
                                                                 "--config.train?"),
    (["--config", "configs/tiny.py", "--config.rehyat.feature_map.degre=3"], "did you mean "
                                                                               "--config.rehyat.feature_map.degree?"),
    (["--config", "configs/tiny.py", "--config.train.steps.x=3"], "config.train.steps is a value"),
    (["--config", "configs/tiny.py", "--config.train.steps=abc"], "--config.train.steps=abc"),
    (["--config", "configs/tny.py"], "configs/tny.py: no such file; did you mean configs/tiny.py?"),
    (["--config", "configs/tiny.py", "--bogus"], "unknown argument '--bogus'"),
    (["--config", "configs/tiny.py", "stray"], "unknown argument 'stray'"),
])
def test_bad_command_lines_are_one_line(monkeypatch, args, message):
  monkeypatch.chdir(ROOT)
  with pytest.raises(cli.UsageError) as error:
    cli.parse_config(args)
  assert message in str(error.value) and "\n" not in str(error.value)


def test_parse_config_applies_the_argument_and_overrides(monkeypatch, tmp_path):
  # From another directory too: the config's own `from configs import common` must still import.
  monkeypatch.chdir(tmp_path)
  cfg = cli.parse_config(["--config", f"{ROOT / 'configs/tiny.py'}:finetune", "--config.train.steps=3",
                          "--config.data.latent_shape=(5,4,6)"])
  assert cfg.stage == "finetune" and cfg.train.steps == 3 and tuple(cfg.data.latent_shape) == (5, 4, 6)
  # A second command line in the same process (the demo parses one per stage).
  assert cli.parse_config(["--config", str(ROOT / "configs/tiny.py")]).train.steps != 3
