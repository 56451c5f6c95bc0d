"""Stage 2 for Wan2.1-T2V-14B: as the 1.3B recipe, FSDP over 8 devices per replica."""

from configs import finetune_wan_1_3b


def get_config(arg: str | None = None):
  c = finetune_wan_1_3b.get_config(arg)
  c.workdir = "runs/finetune_wan_14b"
  c.model.preset = "t2v-14b"
  c.model.checkpoint = "ckpt/wan2.1-t2v-14b"
  c.mesh.data = -1
  c.mesh.fsdp = 8
  return c
