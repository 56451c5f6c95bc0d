"""What a training run keeps on each device between steps, for any mesh, without devices or weights.

It runs ``train.memory.planned_state_bytes``, as the trainer does before it loads anything: the model built
abstractly (``nnx.eval_shape``: shapes and dtypes, no arrays), split by the stage's trainable filter, given its
optimizer state, and placed with the trainer's own sharding rules on an abstract mesh. So the figures are
exact for the weights, Adam moments, EMA and frozen weights of that config and mesh; activations,
gradients and XLA's scratch come on top while a step runs (measure them with one step on the hardware:
the trainer prints its device peak at the end).

  python bench/plan_memory.py --config configs/finetune_wan_14b.py --meshes fsdp=1 fsdp=2 fsdp=4 fsdp=8
  python bench/plan_memory.py --config configs/distill_wan_14b.py --meshes fsdp=1 --set model.precision=bf16
"""

from __future__ import annotations

import argparse
import ast
import math
import sys

import jax
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

from rehyat_jax.train.cli import load_config
from rehyat_jax.train.config_checks import runtime_config, student_config
from rehyat_jax.train.memory import planned_state_bytes
from rehyat_jax.train.mesh import MESH_AXES
from rehyat_jax.train.setup import random_teacher

GIB = 2**30


def parse_mesh(text: str) -> dict[str, int]:
  sizes = {name: 1 for name in MESH_AXES}
  for part in text.split(","):
    name, _, value = part.partition("=")
    if name not in sizes or not value.isdigit():
      raise SystemExit(f"--meshes {text!r}: expected {'/'.join(MESH_AXES)}=N[,...]")
    sizes[name] = int(value)
  return sizes


def plan(cfg, mesh_sizes: dict[str, int]) -> dict[str, float]:
  """GiB per device: trainable, optimizer, ema, frozen, total; and the parameter count in billions."""
  mesh = AbstractMesh(tuple(mesh_sizes[a] for a in MESH_AXES), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
  parts = {name: n / GIB for name, n in planned_state_bytes(cfg, mesh).items()}
  parts["total"] = sum(parts.values())
  model = nnx.eval_shape(lambda: random_teacher(cfg, runtime_config(cfg), student_config(cfg)))
  parts["parameters"] = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(nnx.state(model))) / 1e9
  return parts


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", action="append", required=True, help="config file[:arg]; repeatable")
  parser.add_argument("--meshes", nargs="+", default=["fsdp=1"], help="e.g. fsdp=8 or fsdp=4,sequence=2")
  parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                      help="config overrides, e.g. model.precision=bf16 data.latent_shape=(21,60,104) (Python literals, else strings)")
  args = parser.parse_args(argv)
  print(f"# jax {jax.__version__}; per-device GiB between steps (activations, gradients and scratch not included)")
  print("| config | stage | precision | parameters | mesh | trainable | optimizer | EMA | frozen | total |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for spec in args.config:
    cfg = load_config(spec)
    for assignment in args.set:
      field, _, value = assignment.partition("=")
      node = cfg
      *parents, leaf = field.split(".")
      for name in parents:
        node = node[name]
      try:
        node[leaf] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        node[leaf] = value  # a plain string, e.g. model.precision=bf16
    for text in args.meshes:
      p = plan(cfg, parse_mesh(text))
      print(f"| {spec} | {cfg.stage} | {cfg.model.precision} | {p['parameters']:.2f} B | {text} | "
            f"{p['trainable']:.2f} | {p['optimizer']:.2f} | {p['ema']:.2f} | {p['frozen']:.2f} | "
            f"**{p['total']:.2f}** |", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
