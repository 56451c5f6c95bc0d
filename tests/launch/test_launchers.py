"""Launch scripts (launch/*.sh): dry runs print the right commands and run nothing; a fake gcloud
plays a one-worker TPU VM to run the real (non-dry) TPU path end to end; GPU multi-process runs
with a fake Python. No cloud, GPU or network needed; the scripts run from a throwaway git copy of
the repository layout so the tests do not depend on the state of this checkout."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ("TPU_NAME", "ZONE", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "PROJECT", "CONFIG", "WORKDIR", "SPOT",
            "REMOTE_DIR", "RUN_NAME", "REMOTE_PYTHON", "TPU_POD_PROG", "NUM_GPUS", "NUM_PROCESSES",
            "COORDINATOR_PORT", "PYTHON", "LOG_DIR", "GRACE_SECONDS", "CUDA_VISIBLE_DEVICES", "XLA_FLAGS",
            "XLA_PYTHON_CLIENT_MEM_FRACTION")
TPU_ENV = {"TPU_NAME": "rehyat-v5p", "ZONE": "us-east5-a", "ACCELERATOR_TYPE": "v5p-64", "PROJECT": "my-proj",
           "RUN_NAME": "run1"}
# Overrides that must reach the training command byte for byte (spaces, quotes, a literal $HOME).
TRICKY = ["--config.train.steps=7", "--config.rehyat.converted_blocks=0,3,5",
          "--config.data.data_dir=my data's dir/$HOME"]


def _write_exe(path: Path, text: str) -> Path:
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
  return path


@pytest.fixture()
def repo(tmp_path) -> Path:
  """A git work tree with this repository's launch scripts and configs, plus ignored/untracked files."""
  r = tmp_path / "repo"
  (r / "launch").mkdir(parents=True)
  for f in (ROOT / "launch").glob("*.sh"):
    shutil.copy2(f, r / "launch" / f.name)
  shutil.copytree(ROOT / "configs", r / "configs", ignore=shutil.ignore_patterns("__pycache__"))
  (r / "pyproject.toml").write_text("[project]\nname = 'x'\n")
  (r / ".gitignore").write_text(".venv/\n/runs/\n")
  subprocess.run(["git", "init", "-q", str(r)], check=True)
  subprocess.run(["git", "-C", str(r), "add", "-A"], check=True)
  (r / "untracked_new.py").write_text("x = 1\n")
  (r / ".venv" / "bin").mkdir(parents=True)
  (r / "runs").mkdir()
  (r / "runs" / "big.bin").write_text("ignored")
  return r


@pytest.fixture()
def trap_bin(tmp_path) -> tuple[Path, Path]:
  """A PATH dir whose gcloud / nvidia-smi / tar record the call and fail: dry runs must not call them."""
  d = tmp_path / "trap_bin"
  d.mkdir()
  calls = tmp_path / "trap_calls.txt"
  calls.touch()
  for name in ("gcloud", "nvidia-smi", "tar", "ssh", "scp"):
    _write_exe(d / name, f'#!/usr/bin/env bash\necho "{name} $*" >> "{calls}"\nexit 97\n')
  return d, calls


def _env(extra: dict[str, str] | None = None, path_prefix: Path | None = None) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
  if path_prefix is not None:
    env["PATH"] = f"{path_prefix}{os.pathsep}{env.get('PATH', '')}"
  env.update(extra or {})
  return env


def _restricted_path(tmp_path: Path) -> Path:
  """A PATH dir with only the basic tools the scripts need (no gcloud, no nvidia-smi)."""
  d = tmp_path / "restricted_bin"
  d.mkdir()
  for tool in ("bash", "env", "git", "date", "basename", "dirname", "tr", "tar", "cat", "grep"):
    if shutil.which(tool):
      os.symlink(shutil.which(tool), d / tool)
  return d


def _run(script: Path, *args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _commands(stdout: str) -> list[list[str]]:
  """The '+ ' lines of a dry run, parsed back into argv lists (proves they are copy-pasteable)."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def _gcloud(cmds, verb):
  return [c for c in cmds if c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] and c[4] == verb]


def _remote(cmd: list[str]) -> str:
  return cmd[cmd.index("--command") + 1]


# ---------------------------------------------------------------- TPU: dry run


@pytest.mark.parametrize("script,config", [("distill_tpu.sh", "configs/distill_wan_1_3b.py"),
                                           ("finetune_tpu.sh", "configs/finetune_wan_1_3b.py")])
def test_tpu_dry_run_prints_every_step_and_runs_nothing(repo, trap_bin, script, config):
  bindir, calls = trap_bin
  res = _run(repo / "launch" / script, "--dry-run", "--workdir", "gs://bkt/runs/x", "--spot", "--",
             *TRICKY, env=_env(TPU_ENV, bindir))
  assert res.returncode == 0, res.stderr
  assert calls.read_text() == "", "dry run executed a command"
  cmds = _commands(res.stdout)
  where = ["--zone=us-east5-a", "--project=my-proj"]

  (describe,) = _gcloud(cmds, "describe")
  assert describe[5] == "rehyat-v5p" and describe[6:8] == where
  (create,) = _gcloud(cmds, "create")
  assert create[5] == "rehyat-v5p" and create[6:8] == where
  assert "--accelerator-type=v5p-64" in create and "--version=v2-alpha-tpuv5" in create and "--spot" in create
  assert cmds.index(describe) < cmds.index(create)

  (scp,) = _gcloud(cmds, "scp")
  assert "--worker=all" in scp and scp[6] == "rehyat-v5p:rehyat-jax-src.tar.gz"
  ssh = _gcloud(cmds, "ssh")
  sync, install, start, tail = ssh
  for c in (sync, install, start):
    assert c[5] == "rehyat-v5p" and "--worker=all" in c and all(w in c for w in where)
  assert "tar -xzf rehyat-jax-src.tar.gz -C rehyat-jax" in _remote(sync)
  assert "pip install --quiet -e \".[tpu]\"" in _remote(install)
  run = _remote(start)
  assert "nohup" in run and "> \"$log\" 2>&1" in run and "logs/run1.$(hostname).log" in run
  train = shlex.split(run[run.index("env PYTHONUNBUFFERED=1"):run.index(" > ")])
  assert train == ["env", "PYTHONUNBUFFERED=1", ".venv/bin/python", "-m", "rehyat_jax.train", "--config", config, "--config.mesh.auto_distributed=true",
                   "--config.workdir=gs://bkt/runs/x", *TRICKY]
  assert "--worker=0" in tail and "tail -n +1 -F logs/run1.$(hostname).log" in _remote(tail)
  # The local tarball step lists what git would carry.
  assert "ls-files -z --cached --others --exclude-standard | tar -czf" in res.stdout
  # Every remote command is valid bash.
  for c in ssh:
    subprocess.run(["bash", "-n", "-c", _remote(c)], check=True)


def test_tpu_flags_override_env_and_defaults(repo, trap_bin):
  bindir, calls = trap_bin
  env = _env({**TPU_ENV, "SPOT": "1", "CONFIG": "configs/tiny.py"}, bindir)
  res = _run(repo / "launch" / "distill_tpu.sh", "-n", "--name=other", "--zone", "europe-west4-b",
             "--accelerator-type", "v6e-16", "--no-spot", "--config=configs/distill_wan_14b.py:0,1",
             "--remote-dir", "/opt/my dir", "--skip-sync", "--skip-install", "--no-tail",
             "--env", "LIBTPU_INIT_ARGS=--xla_tpu_enable_async_collective_fusion=true",
             "--config.train.steps=3", env=env)
  assert res.returncode == 0, res.stderr
  assert calls.read_text() == ""
  cmds = _commands(res.stdout)
  (create,) = _gcloud(cmds, "create")
  assert create[5] == "other" and "--zone=europe-west4-b" in create and "--spot" not in create
  assert "--version=v2-alpha-tpuv6e" in create and "--accelerator-type=v6e-16" in create
  assert not _gcloud(cmds, "scp")
  (start,) = _gcloud(cmds, "ssh")  # no sync, no install, no tail
  run = _remote(start)
  assert run.startswith("cd '/opt/my dir' && ")
  assert ("env PYTHONUNBUFFERED=1 LIBTPU_INIT_ARGS=--xla_tpu_enable_async_collective_fusion=true .venv/bin/python "
          "-m rehyat_jax.train --config configs/distill_wan_14b.py:0,1 --config.mesh.auto_distributed=true --config.train.steps=3") in run
  assert "--config.workdir" not in run
  assert "gs://" in res.stderr  # reminder that a local workdir is per worker


def test_tpu_sequence_parallel_flag_sets_the_mesh_axis(repo, trap_bin):
  bindir, calls = trap_bin
  res = _run(repo / "launch" / "distill_tpu.sh", "-n", "--sequence-parallel", "4", "--skip-sync", "--skip-install",
             "--no-tail", "--config.train.steps=3", env=_env(TPU_ENV, bindir))
  assert res.returncode == 0, res.stderr
  assert calls.read_text() == ""
  (start,) = _gcloud(_commands(res.stdout), "ssh")
  assert ("-m rehyat_jax.train --config configs/distill_wan_1_3b.py --config.mesh.auto_distributed=true "
          "--config.mesh.sequence=4 --config.train.steps=3") in _remote(start)


def test_tpu_stop_and_logs_actions(repo, trap_bin):
  bindir, calls = trap_bin
  env = _env({"TPU_NAME": "t", "ZONE": "z"}, bindir)  # no accelerator type / config needed
  stop = _run(repo / "launch" / "distill_tpu.sh", "--stop", "--dry-run", env=env)
  assert stop.returncode == 0, stop.stderr
  (cmd,) = _commands(stop.stdout)
  assert cmd[4] == "ssh" and "--worker=all" in cmd and "kill -TERM" in _remote(cmd)
  logs = _run(repo / "launch" / "finetune_tpu.sh", "--logs", "--dry-run", env=env)
  (cmd,) = _commands(logs.stdout)
  assert "--worker=0" in cmd and "tail -n +1 -F" in _remote(cmd) and "ls -t logs/" in _remote(cmd)
  for c in _commands(stop.stdout) + _commands(logs.stdout):
    subprocess.run(["bash", "-n", "-c", _remote(c)], check=True)
  assert calls.read_text() == ""


@pytest.mark.parametrize("missing,hint", [("TPU_NAME", "--name"), ("ZONE", "--zone"),
                                          ("ACCELERATOR_TYPE", "--accelerator-type")])
def test_tpu_missing_setting_fails_naming_it(repo, trap_bin, missing, hint):
  bindir, calls = trap_bin
  env = _env({k: v for k, v in TPU_ENV.items() if k != missing}, bindir)
  res = _run(repo / "launch" / "distill_tpu.sh", "--dry-run", env=env)
  assert res.returncode != 0
  assert missing in res.stderr and hint in res.stderr
  assert calls.read_text() == ""


@pytest.mark.parametrize("args,message", [
    (["--config", "configs/nope.py"], "CONFIG file not found"),
    (["--bogus"], "unknown argument: --bogus"),
    (["--zone"], "--zone needs a value"),
    (["--accelerator-type", "tpu9-8"], "RUNTIME_VERSION"),
])
def test_tpu_bad_arguments(repo, trap_bin, args, message):
  bindir, calls = trap_bin
  res = _run(repo / "launch" / "distill_tpu.sh", "--dry-run", *args, env=_env(TPU_ENV, bindir))
  assert res.returncode != 0 and message in res.stderr
  assert calls.read_text() == ""


def test_tpu_refuses_to_ship_with_unstaged_deletions(repo, trap_bin):
  bindir, _ = trap_bin
  (repo / "configs" / "tiny.py").unlink()
  res = _run(repo / "launch" / "distill_tpu.sh", "--dry-run", env=_env(TPU_ENV, bindir))
  assert res.returncode != 0 and "configs/tiny.py" in res.stderr and "git rm" in res.stderr


@pytest.mark.parametrize("script", ["distill_tpu.sh", "finetune_tpu.sh", "tpu_pod.sh", "train_gpu.sh"])
def test_help_exits_zero(repo, trap_bin, script):
  bindir, calls = trap_bin
  res = _run(repo / "launch" / script, "--help", env=_env(path_prefix=bindir))
  assert res.returncode == 0 and "Usage:" in res.stdout and "--dry-run" in res.stdout
  assert calls.read_text() == ""


def test_tpu_without_gcloud_fails_unless_dry_run(repo, tmp_path):
  bindir = _restricted_path(tmp_path)
  env = _env(TPU_ENV)
  env["PATH"] = str(bindir)
  script = str(repo / "launch" / "distill_tpu.sh")
  res = subprocess.run([str(bindir / "bash"), script], env=env, capture_output=True, text=True, timeout=30)
  assert res.returncode != 0 and "gcloud not found" in res.stderr
  dry = subprocess.run([str(bindir / "bash"), script, "--dry-run"], env=env, capture_output=True, text=True,
                       timeout=30)
  assert dry.returncode == 0, dry.stderr
  assert "+ gcloud compute tpus tpu-vm create rehyat-v5p" in dry.stdout


# ---------------------------------------------------------------- TPU: real path, fake gcloud

FAKE_GCLOUD = r"""#!/usr/bin/env bash
# One-worker fake of `gcloud compute tpus tpu-vm`: records calls, runs ssh commands locally.
set -euo pipefail
printf '%s\x1f' "$@" >> "$FAKE_CALLS"; echo >> "$FAKE_CALLS"
verb=$4
case $verb in
  describe) if [ "${FAKE_TPU:-}" ]; then printf '%s\t%s\n' READY "$FAKE_TPU"; else echo "NOT_FOUND" >&2; exit 1; fi ;;
  create) ;;
  scp) cp "$5" "$FAKE_HOME/${6#*:}" ;;
  ssh)
    while [ "$1" != --command ]; do shift; done
    cd "$FAKE_HOME" && HOME="$FAKE_HOME" exec bash -c "$2" ;;
  *) echo "fake gcloud: unexpected $*" >&2; exit 3 ;;
esac
"""

FAKE_PYTHON = r"""#!/usr/bin/env bash
# Worker's .venv/bin/python: records its argv (NUL-separated, one file per call).
d="$(cd "$(dirname "$0")/../.." && pwd)/calls"; mkdir -p "$d"
printf '%s\0' "$@" > "$d/$(date +%s%N).$$"
echo "fake python done"
"""


@pytest.fixture()
def fake_cloud(tmp_path):
  bindir = tmp_path / "fake_bin"
  bindir.mkdir()
  _write_exe(bindir / "gcloud", FAKE_GCLOUD)
  # Worker-side tail that does not follow (so the launcher returns).
  _write_exe(bindir / "tail", '#!/usr/bin/env bash\nexec cat "${@: -1}"\n')
  home = tmp_path / "worker_home"
  venv = home / "rehyat-jax" / ".venv" / "bin"
  venv.mkdir(parents=True)
  _write_exe(venv / "python", FAKE_PYTHON)
  calls = tmp_path / "gcloud_calls"
  env = _env({**TPU_ENV, "FAKE_HOME": str(home), "FAKE_CALLS": str(calls), "TMPDIR": str(tmp_path)}, bindir)
  return env, home, calls


def _gcloud_calls(calls: Path) -> list[list[str]]:
  return [line.split("\x1f")[:-1] for line in calls.read_text().splitlines()]


def _python_calls(home: Path, want: int, timeout: float = 10) -> list[list[str]]:
  d = home / "rehyat-jax" / "calls"
  deadline = time.time() + timeout
  while time.time() < deadline:
    files = sorted(d.glob("*")) if d.exists() else []
    if len(files) >= want:
      return [f.read_bytes().decode().split("\0")[:-1] for f in files]
    time.sleep(0.05)
  raise AssertionError(f"expected {want} python calls on the fake worker, found {len(files)}")


def test_tpu_real_run_against_fake_worker(repo, fake_cloud):
  env, home, calls = fake_cloud
  res = _run(repo / "launch" / "distill_tpu.sh", "--workdir", "gs://bkt/r", "--", *TRICKY, env=env)
  assert res.returncode == 0, res.stderr
  verbs = [c[3] for c in _gcloud_calls(calls)]
  assert verbs == ["describe", "create", "scp", "ssh", "ssh", "ssh", "ssh"]
  # Shipped: tracked + untracked-not-ignored files; not .venv, runs/ or .git.
  src = home / "rehyat-jax"
  assert (src / "launch" / "tpu_pod.sh").is_file() and (src / "untracked_new.py").is_file()
  assert (src / "configs" / "distill_wan_1_3b.py").is_file()
  assert not (src / "runs").exists() and not (src / ".git").exists()
  assert not (home / "rehyat-jax-src.tar.gz").exists()  # unpacked and removed on the worker
  assert not list(Path(env["TMPDIR"]).glob("rehyat-jax-src-*"))  # local tarball cleaned up
  pip_upgrade, pip_install, train = _python_calls(home, 3)
  assert pip_upgrade == ["-m", "pip", "install", "--quiet", "--upgrade", "pip"]
  assert pip_install == ["-m", "pip", "install", "--quiet", "-e", ".[tpu]"]
  assert train == ["-m", "rehyat_jax.train", "--config", "configs/distill_wan_1_3b.py", "--config.mesh.auto_distributed=true",
                   "--config.workdir=gs://bkt/r", *TRICKY]
  log = next((src / "logs").glob("run1.*.log"))
  assert "fake python done" in log.read_text()
  assert "started pid" in res.stdout
  # A second launch sees the live pid file and refuses; --stop signals it.
  assert int((src / "logs" / "train.pid").read_text()) > 0
  sleeper = subprocess.Popen(["sleep", "30"])
  try:
    (src / "logs" / "train.pid").write_text(f"{sleeper.pid}\n")
    again = _run(repo / "launch" / "distill_tpu.sh", "--skip-sync", "--skip-install", "--no-tail",
                 env={**env, "FAKE_TPU": "v5p-64"})
    assert again.returncode != 0 and "already running" in again.stderr
    stop = _run(repo / "launch" / "distill_tpu.sh", "--stop", env=env)
    assert stop.returncode == 0 and "sent SIGTERM" in stop.stdout
    assert sleeper.wait(timeout=5) == -15
  finally:
    sleeper.kill()


def test_tpu_reuse_checks_existing_type(repo, fake_cloud):
  env, home, calls = fake_cloud
  res = _run(repo / "launch" / "distill_tpu.sh", "--skip-sync", "--skip-install", "--no-tail",
             env={**env, "FAKE_TPU": "v5p-64"})
  assert res.returncode == 0, res.stderr
  assert [c[3] for c in _gcloud_calls(calls)] == ["describe", "ssh"]  # reused: no create
  assert "reusing TPU rehyat-v5p" in res.stderr
  wrong = _run(repo / "launch" / "distill_tpu.sh", "--no-tail", env={**env, "FAKE_TPU": "v4-32"})
  assert wrong.returncode != 0 and "exists as v4-32" in wrong.stderr


# ---------------------------------------------------------------- GPU


def test_gpu_dry_run_single_process_all_gpus(repo, trap_bin):
  bindir, calls = trap_bin
  res = _run(repo / "launch" / "train_gpu.sh", "--dry-run", "--workdir", "/ckpt/run a", "--", *TRICKY,
             env=_env({"NUM_GPUS": "8"}, bindir))
  assert res.returncode == 0, res.stderr
  assert calls.read_text() == ""
  assert "8 GPUs, 1 process" in res.stdout
  cd, train = _commands(res.stdout)
  assert cd == ["cd", str(repo)]
  assert train[0] == "env" and "XLA_PYTHON_CLIENT_MEM_FRACTION=0.90" in train
  assert "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true" in train
  assert not any(a.startswith("CUDA_VISIBLE_DEVICES") or "mesh." in a for a in train)
  i = train.index("-m")
  assert train[i:] == ["-m", "rehyat_jax.train", "--config", "configs/distill_wan_1_3b.py",
                       "--config.workdir=/ckpt/run a", *TRICKY]


def test_gpu_dry_run_two_processes(repo, trap_bin):
  bindir, calls = trap_bin
  res = _run(repo / "launch" / "train_gpu.sh", "--dry-run", "--num-processes", "2", "--port", "4321",
             "--config", "configs/finetune_wan_1_3b.py", "--config.train.steps=9",
             env=_env({"NUM_GPUS": "8", "RUN_NAME": "r", "XLA_FLAGS": "--xla_dump_to=/tmp/d"}, bindir))
  assert res.returncode == 0, res.stderr
  assert calls.read_text() == ""
  lines = [l for l in res.stdout.splitlines() if "rehyat_jax.train" in l]
  assert len(lines) == 2
  for i, line in enumerate(lines):
    assert line.endswith(f"> runs/logs/r.proc{i}.log 2>&1 < /dev/null &")
    argv = shlex.split(line[2:line.index(" > ")])
    devices = "0,1,2,3" if i == 0 else "4,5,6,7"
    assert f"CUDA_VISIBLE_DEVICES={devices}" in argv
    assert "XLA_FLAGS=--xla_dump_to=/tmp/d --xla_gpu_enable_latency_hiding_scheduler=true" in argv
    assert argv[argv.index("-m"):] == [
        "-m", "rehyat_jax.train", "--config", "configs/finetune_wan_1_3b.py", "--config.train.steps=9",
        "--config.mesh.coordinator_address=127.0.0.1:4321", "--config.mesh.num_processes=2",
        f"--config.mesh.process_id={i}"]
  assert "+ tail -n +1 -F runs/logs/r.proc0.log &" in res.stdout


def test_gpu_sequence_parallel_flag_sets_the_mesh_axis(repo, trap_bin):
  bindir, _ = trap_bin
  res = _run(repo / "launch" / "train_gpu.sh", "-n", "--sequence-parallel", "2", "--config.train.steps=3",
             env=_env({"NUM_GPUS": "2"}, bindir))
  assert res.returncode == 0, res.stderr
  _, train = _commands(res.stdout)
  assert train[train.index("-m"):] == ["-m", "rehyat_jax.train", "--config", "configs/distill_wan_1_3b.py",
                                       "--config.mesh.sequence=2", "--config.train.steps=3"]
  clash = _run(repo / "launch" / "train_gpu.sh", "-n", "--sequence-parallel=2", "--config.mesh.sequence=4",
               env=_env({"NUM_GPUS": "2"}, bindir))
  assert clash.returncode != 0 and "conflicts with --sequence-parallel 2" in clash.stderr
  bad = _run(repo / "launch" / "train_gpu.sh", "-n", env=_env({"NUM_GPUS": "2", "SEQUENCE_PARALLEL": "0"}, bindir))
  assert bad.returncode != 0 and "SEQUENCE_PARALLEL must be a positive integer" in bad.stderr


def test_gpu_detects_gpus_and_respects_cuda_visible_devices(repo, tmp_path):
  bindir = tmp_path / "smi"
  bindir.mkdir()
  _write_exe(bindir / "nvidia-smi", "#!/usr/bin/env bash\nfor i in 0 1 2 3; do echo \"GPU $i: H200 (UUID: x)\"; done\n")
  res = _run(repo / "launch" / "train_gpu.sh", "-n", "--num-processes=4", env=_env(path_prefix=bindir))
  assert res.returncode == 0, res.stderr
  assert "4 GPUs, 4 process" in res.stdout
  assert [f"CUDA_VISIBLE_DEVICES={i}" in l for i, l in enumerate(
      l for l in res.stdout.splitlines() if "rehyat_jax.train" in l)] == [True] * 4
  res = _run(repo / "launch" / "train_gpu.sh", "-n", "--num-processes", "2",
             env=_env({"CUDA_VISIBLE_DEVICES": "5,7"}, bindir))
  assert "CUDA_VISIBLE_DEVICES=5 " in res.stdout and "CUDA_VISIBLE_DEVICES=7 " in res.stdout


@pytest.mark.parametrize("env,args,message", [
    ({}, [], "nvidia-smi not found; set NUM_GPUS"),
    ({"NUM_GPUS": "3"}, ["--num-processes", "2"], "does not divide the 3 GPUs"),
    ({"NUM_GPUS": "2"}, ["--num-processes", "2", "--config.mesh.process_id=1"], "conflicts with --num-processes"),
    ({"NUM_GPUS": "x"}, [], "NUM_GPUS must be a positive integer"),
])
def test_gpu_bad_settings(repo, tmp_path, env, args, message):
  e = _env(env)
  e["PATH"] = str(_restricted_path(tmp_path))
  res = _run(repo / "launch" / "train_gpu.sh", "-n", *args, env=e)
  assert res.returncode != 0 and message in res.stderr


GPU_FAKE_PYTHON = r"""#!/usr/bin/env bash
# Process 1 fails when FAIL is set, but only once process 0 has its TERM handler (READY file): on a loaded
# machine process 0 may otherwise start after the launcher's SIGTERM and die silently. The others run until
# SIGTERM, then exit 0 ("checkpointed").
trap 'echo "got TERM"; exit 0' TERM
printf '%s\n' "$CUDA_VISIBLE_DEVICES $*"
case "$*" in *process_id=0*) if [ -n "${READY:-}" ]; then : > "$READY"; fi ;; esac
case "$*" in *process_id=1*) if [ -n "${FAIL:-}" ]; then
  for _ in $(seq 400); do [ -e "$READY" ] && break; sleep 0.05; done; exit 3; fi ;; esac
if [ -n "${QUICK:-}" ]; then exit 0; fi
for _ in $(seq 200); do sleep 0.05; done
exit 9
"""


def test_gpu_multi_process_real_run(repo, tmp_path):
  py = _write_exe(tmp_path / "fakepy", GPU_FAKE_PYTHON)
  base = {"NUM_GPUS": "4", "LOG_DIR": str(tmp_path / "logs"), "PYTHON": str(py)}
  ok = _run(repo / "launch" / "train_gpu.sh", "--num-processes", "2", "--run-name", "ok",
            env=_env({**base, "QUICK": "1"}))
  assert ok.returncode == 0, ok.stderr
  assert (tmp_path / "logs" / "ok.proc1.log").read_text().startswith("2,3 -m rehyat_jax.train")
  # One process fails: exit with its status, the other gets SIGTERM.
  fail = _run(repo / "launch" / "train_gpu.sh", "--num-processes", "2", "--run-name", "bad",
              env=_env({**base, "FAIL": "1", "READY": str(tmp_path / "proc0.ready")}))
  assert fail.returncode == 3 and "process 1 exited with status 3" in fail.stderr
  assert "got TERM" in (tmp_path / "logs" / "bad.proc0.log").read_text()


def test_gpu_sigterm_is_forwarded(repo, tmp_path):
  py = _write_exe(tmp_path / "fakepy", GPU_FAKE_PYTHON)
  env = _env({"NUM_GPUS": "2", "LOG_DIR": str(tmp_path / "logs"), "PYTHON": str(py)})
  proc = subprocess.Popen(["bash", str(repo / "launch" / "train_gpu.sh"), "--num-processes", "2", "--run-name", "t"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  logs = [tmp_path / "logs" / f"t.proc{i}.log" for i in range(2)]
  deadline = time.time() + 10
  while time.time() < deadline and not all(p.exists() and p.read_text() for p in logs):
    time.sleep(0.05)
  proc.terminate()
  out, err = proc.communicate(timeout=15)
  assert proc.returncode == 0, err
  assert all("got TERM" in p.read_text() for p in logs)


def test_gpu_xla_flags_are_known_to_the_installed_jaxlib(repo, trap_bin):
  """XLA aborts on unknown XLA_FLAGS, so a flag removed upstream must fail here, not on the cluster."""
  pytest.importorskip("jax")
  bindir, _ = trap_bin
  res = _run(repo / "launch" / "train_gpu.sh", "-n", env=_env({"NUM_GPUS": "1"}, bindir))
  train = _commands(res.stdout)[-1]
  flags = next(a for a in train if a.startswith("XLA_FLAGS="))[len("XLA_FLAGS="):]
  check = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; jnp.zeros(2).block_until_ready()"],
                         env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags},
                         capture_output=True, text=True, timeout=60)
  assert check.returncode == 0, check.stderr[-2000:]
