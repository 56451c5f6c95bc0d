"""The command-line tools: tools/convert_wan_weights.py and tools/make_random_wan_checkpoint.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors

from rehyat_jax.convert import open_safetensors_source, read_converted
from rehyat_jax.models.config import WAN_TINY

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def run_tool(name: str, *args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(TOOLS / name), *map(str, args)], capture_output=True, text=True,
                        timeout=120)


def test_convert_cli_success_and_errors(tiny_diffusers, tiny_original_file, tmp_path):
  _, directory = tiny_diffusers
  done = run_tool("convert_wan_weights.py", directory, tmp_path / "out", "--dtype", "bfloat16")
  assert done.returncode == 0, done.stderr
  assert "done:" in done.stdout
  assert json.loads((tmp_path / "out" / "conversion.json").read_text())["dtype"] == "bfloat16"

  exists = run_tool("convert_wan_weights.py", directory, tmp_path / "out")
  assert exists.returncode == 1
  assert "already exists" in exists.stderr and "Traceback" not in exists.stderr

  no_heads = run_tool("convert_wan_weights.py", tiny_original_file, tmp_path / "out2")
  assert no_heads.returncode == 1
  assert "--num-heads" in no_heads.stderr and "Traceback" not in no_heads.stderr
  assert not (tmp_path / "out2").exists()
  with_heads = run_tool("convert_wan_weights.py", tiny_original_file, tmp_path / "out2", "--num-heads", "2")
  assert with_heads.returncode == 0, with_heads.stderr


@pytest.mark.parametrize("layout, extra", [
    ("original", ["--dtype", "bfloat16", "--prefix", "model.diffusion_model."]),
    ("diffusers", ["--max-shard-gb", "0.00002"]),
])
def test_random_checkpoint_round_trip(layout, extra, tmp_path):
  made = run_tool("make_random_wan_checkpoint.py", tmp_path / "src", "--preset", "tiny", "--layout", layout, *extra)
  assert made.returncode == 0, made.stderr
  files = sorted((tmp_path / "src").glob("*.safetensors"))
  assert (len(files) == 1) if layout == "original" else (len(files) > 1)
  for file in files:  # the hand-written files are valid for the safetensors library too
    with safetensors.safe_open(file, "pt") as f:
      for key in f.keys():
        f.get_tensor(key)
  source = open_safetensors_source(tmp_path / "src")
  assert len(source.tensors) == 15 + 27 * WAN_TINY.num_layers

  done = run_tool("convert_wan_weights.py", tmp_path / "src", tmp_path / "out")
  assert done.returncode == 0, done.stderr
  cfg, params = read_converted(tmp_path / "out")
  assert (cfg.dim, cfg.ffn_dim, cfg.num_heads, cfg.num_layers, cfg.text_dim) == (
      WAN_TINY.dim, WAN_TINY.ffn_dim, WAN_TINY.num_heads, WAN_TINY.num_layers, WAN_TINY.text_dim)
  assert abs(float(params["blocks"]["self_attn"]["norm_q"]["scale"].mean()) - 1.0) < 0.05
  assert float(np.abs(params["blocks"]["ffn"]["fc1"]["kernel"]).mean()) < 0.1


def test_convert_cli_routes_components(tmp_path):
  """--component picks the umT5 / VAE converter: their own errors come back, not the DiT's."""
  bad = run_tool("convert_wan_weights.py", tmp_path / "missing.pth", tmp_path / "out", "--component", "vae")
  assert bad.returncode == 1 and "no such file" in bad.stderr and not (tmp_path / "out").exists()
  heads = run_tool("convert_wan_weights.py", tmp_path / "x", tmp_path / "out", "--component", "umt5", "--num-heads", "4")
  assert heads.returncode == 1 and "--num-heads applies to --component dit only" in heads.stderr
  not_t5 = tmp_path / "dit_like.safetensors"
  import numpy as np
  from safetensors.numpy import save_file
  save_file({"patch_embedding.weight": np.zeros((4, 4, 1, 2, 2), np.float32)}, str(not_t5))
  wrong = run_tool("convert_wan_weights.py", not_t5, tmp_path / "out", "--component", "umt5")
  assert wrong.returncode == 1 and "error:" in wrong.stderr and not (tmp_path / "out").exists()


SIGTERM_MIDWAY = """
import sys, time
from pathlib import Path
from rehyat_jax.convert import storage
sys.path.insert(0, sys.argv[1])
import convert_wan_weights

def fill_then_wait(params, source, table, progress=None):
  Path(sys.argv[4]).touch()  # the staging directory and its buffers exist now
  time.sleep(60)

storage.fill_params = fill_then_wait
sys.exit(convert_wan_weights.main(sys.argv[2:4]))
"""


def test_sigterm_midway_leaves_nothing_behind(tiny_diffusers, tmp_path):
  _, directory = tiny_diffusers
  out_dir = tmp_path / "ckpt"
  out_dir.mkdir()
  ready = tmp_path / "ready"
  proc = subprocess.Popen([sys.executable, "-c", SIGTERM_MIDWAY, str(TOOLS), str(directory), str(out_dir / "dit"),
                           str(ready)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 60
  while not ready.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert ready.exists(), proc.communicate()[1]
  assert [p.name.split("-")[0] for p in out_dir.iterdir()] == [".dit.converting"]
  proc.terminate()
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == 128 + signal.SIGTERM, err
  assert list(out_dir.iterdir()) == []
