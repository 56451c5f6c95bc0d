"""Host memory of a DiT checkpoint conversion: random Wan2.1 checkpoints of a preset's widths at several
depths, converted by ``tools/convert_wan_weights.py`` in a child process whose resident memory is sampled.

Two figures per run, both peaks: anonymous memory (``RssAnon``, what the converter holds itself) and
anonymous plus file-backed pages (``RssFile``: the memory-mapped safetensors pages and Orbax's output;
the kernel can drop these under pressure, so they do not limit which machine can convert). Depths
below the real one are there to show how the peak grows with the model: a converter that streams
keeps the first figure flat.

``--memory-limit-gb`` runs each conversion in a cgroup (v1) memory group with that limit, page cache
included, as a machine with that much RAM would: a converter that holds the model in RAM is killed.

  python bench/convert_memory.py --preset t2v-14b --layers 2,4,8 --target-dtype bfloat16
  python bench/convert_memory.py --preset t2v-14b --layers 24 --memory-limit-gb 6   # needs root
  python bench/convert_memory.py --tiny   # smoke test, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rehyat_jax.convert.random_checkpoint import make_random_checkpoint
from rehyat_jax.models.config import PRESETS

REPO = Path(__file__).resolve().parent.parent
GB = 1e9


def _status_kib(pid: int, field: str) -> int:
  try:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
      if line.startswith(field + ":"):
        return int(line.split()[1])
  except (FileNotFoundError, ProcessLookupError):
    pass
  return 0


CGROUP_MEMORY = Path("/sys/fs/cgroup/memory")


def memory_group(limit_gb: float) -> Path:
  """A fresh cgroup v1 memory group limited to ``limit_gb`` (page cache included); the caller removes it."""
  if not (CGROUP_MEMORY / "cgroup.procs").exists():
    raise SystemExit(f"--memory-limit-gb needs the cgroup v1 memory controller at {CGROUP_MEMORY}")
  group = CGROUP_MEMORY / f"convert_memory_{os.getpid()}"
  try:
    group.mkdir()
    (group / "memory.limit_in_bytes").write_text(str(int(limit_gb * GB)))
  except OSError as e:
    raise SystemExit(f"--memory-limit-gb: cannot create a memory group in {CGROUP_MEMORY} ({e}); run as root") from e
  return group


def run_sampled(cmd: list[str], group: Path | None = None,
                interval_s: float = 0.05) -> tuple[int, int, float, str, bool]:
  """Runs ``cmd`` (in memory ``group`` if given); returns (peak RssAnon bytes, peak RssAnon + RssFile bytes,
  seconds, output tail, whether the group's OOM killer ended it)."""
  start = time.perf_counter()
  join = None if group is None else lambda: (group / "cgroup.procs").write_text(str(os.getpid()))
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=join)
  peaks = [0, 0]
  done = threading.Event()

  def sample():
    while not done.is_set():
      anon = _status_kib(proc.pid, "RssAnon") * 1024
      resident = anon + _status_kib(proc.pid, "RssFile") * 1024
      peaks[0], peaks[1] = max(peaks[0], anon), max(peaks[1], resident)
      time.sleep(interval_s)

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  output, _ = proc.communicate()
  done.set()
  sampler.join()
  killed = proc.returncode == -signal.SIGKILL and group is not None
  if proc.returncode != 0 and not killed:
    raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
  return peaks[0], peaks[1], time.perf_counter() - start, (output.strip().splitlines() or [''])[-1], killed


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="t2v-14b", choices=sorted(PRESETS))
  parser.add_argument("--layers", default="2,4,8", help="comma-separated depths; 0 = the preset's own")
  parser.add_argument("--source-dtype", default="bfloat16", choices=["float32", "bfloat16"])
  parser.add_argument("--target-dtype", default="bfloat16", choices=["float32", "bfloat16"])
  parser.add_argument("--max-shard-gb", type=float, default=5.0, help="source shard size (the releases use 5-10)")
  parser.add_argument("--workdir", default=None, help="where the checkpoints go (default: a temporary directory)")
  parser.add_argument("--memory-limit-gb", type=float, default=None,
                      help="run each conversion in a cgroup memory group of this size (cgroup v1, root)")
  parser.add_argument("--tiny", action="store_true", help="the tiny preset at depths 1,2 (smoke test)")
  args = parser.parse_args(argv)
  if args.tiny:
    args.preset, args.layers = "tiny", "1,2"

  base = PRESETS[args.preset]
  workdir = Path(args.workdir or tempfile.mkdtemp(prefix="convert_memory_"))
  print(f"# {platform.node()}, {platform.processor() or platform.machine()}, Python {platform.python_version()}; "
        f"preset {args.preset}, source {args.source_dtype} in {args.max_shard_gb} GB shards, "
        f"target {args.target_dtype}"
        + (f"; each conversion in a {args.memory_limit_gb} GB memory group" if args.memory_limit_gb else ""))
  print("| layers | parameters | source GB | target GB | peak anonymous GB | peak resident GB | seconds | result |")
  print("|---|---|---|---|---|---|---|---|")
  group = memory_group(args.memory_limit_gb) if args.memory_limit_gb else None
  try:
    for layers in [int(x) for x in args.layers.split(",")]:
      cfg = dataclasses.replace(base, num_layers=layers or base.num_layers)
      src, dst = workdir / f"src_{cfg.num_layers}", workdir / f"dst_{cfg.num_layers}"
      files = make_random_checkpoint(src, cfg, "original", dtype=args.source_dtype,
                                     max_shard_gb=args.max_shard_gb, progress=None)
      source_bytes = sum(f.stat().st_size for f in files)
      anon, resident, seconds, _, killed = run_sampled(
          [sys.executable, str(REPO / "tools" / "convert_wan_weights.py"), str(src), str(dst),
           "--dtype", args.target_dtype], group)
      target_bytes = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file()) if dst.exists() else 0
      leftovers = [p.name for p in workdir.iterdir() if p.name.startswith(f".{dst.name}.")]
      result = ("killed: out of memory" if killed else "converted") + (f"; left behind: {leftovers}" if leftovers else "")
      params = source_bytes // (4 if args.source_dtype == "float32" else 2)
      print(f"| {cfg.num_layers} | {params / 1e9:.2f} B | {source_bytes / GB:.2f} | {target_bytes / GB:.2f} | "
            f"{anon / GB:.2f} | {resident / GB:.2f} | {seconds:.0f} | {result} |", flush=True)
      shutil.rmtree(src)
      shutil.rmtree(dst, ignore_errors=True)
  finally:
    if group is not None:
      group.rmdir()
    if args.workdir is None:
      shutil.rmtree(workdir, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
