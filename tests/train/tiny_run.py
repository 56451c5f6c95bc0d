"""Run configs/tiny.py in this process and print one RESULT line (losses, final step, parameter checksum).

  python tests/train/tiny_run.py STAGE '{"train.steps": 3, ...}'

Used by the tests as a subprocess where XLA_FLAGS (simulated devices) or jax.distributed differ.
"""

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def apply_overrides(cfg, overrides: dict):
  for dotted, value in overrides.items():
    node = cfg
    *parents, leaf = dotted.split(".")
    for name in parents:
      node = node[name]
    node[leaf] = tuple(value) if isinstance(value, list) else value
  return cfg


def checksum(tree) -> str:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(tree):
    value = multihost_utils.process_allgather(leaf, tiled=True) if jax.process_count() > 1 else leaf
    digest.update(np.asarray(value).tobytes())
  return digest.hexdigest()


def main():
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from rehyat_jax.train.loop import run  # pylint: disable=g-import-not-at-top
  cfg = apply_overrides(tiny.get_config(sys.argv[1]), json.loads(sys.argv[2]))
  summary = run(cfg)
  result = {"losses": [h["loss"] for h in summary["history"]], "final_step": summary["final_step"],
            "preempted": summary["preempted"], "sha": checksum(summary["trainable"])}
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
