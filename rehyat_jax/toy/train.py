"""``python -m rehyat_jax.train`` for a model that starts from an architecture rather than a checkpoint.

  python -m rehyat_jax.toy.train --config configs/toy_teacher.py     # teacher: flow matching, every block softmax

With ``toy.architecture`` (a WanConfig as a dict) and no checkpoint at ``model.checkpoint`` yet, a freshly
initialised DiT of that architecture is written there first (there is no preset for it, and every loader
reads converted checkpoints); then the run goes as ``python -m rehyat_jax.train`` runs it (resuming from
the workdir's checkpoints). A stage-2 run writes the trained DiT to ``<workdir>/dit`` at its end
(``train/stages/finetune.py``), which is the teacher the toy distillation loads.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from rehyat_jax.models.config import WanConfig
from rehyat_jax.toy.export import write_initial_dit

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file (configs/toy_*.py)", lock_config=True)
flags.mark_flags_as_required(["config"])


def prepare_initial_checkpoint(cfg) -> str | None:
  """Writes the initial DiT a ``toy.architecture`` config starts from, if it is not there yet."""
  toy = cfg.get("toy")
  if toy is None or not toy.get("architecture"):
    return None
  checkpoint = Path(cfg.model.checkpoint)
  if not (checkpoint / "config.json").is_file():
    architecture = dict(toy.architecture)
    architecture["patch_size"] = tuple(architecture["patch_size"])
    write_initial_dit(WanConfig.from_dict(architecture), checkpoint, seed=cfg.model.seed)
    print(f"initial DiT ({architecture}) written to {checkpoint}", flush=True)
  return str(checkpoint)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from rehyat_jax.train.loop import run  # pylint: disable=g-import-not-at-top
  cfg = _CONFIG.value
  prepare_initial_checkpoint(cfg)
  run(cfg)


if __name__ == "__main__":
  app.run(main)
