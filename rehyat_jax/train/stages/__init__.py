"""Training stages as objects: stage 1 ``distill`` (only adapters train, block-wise attention
distillation) and stage 2 ``finetune`` (flow matching on the whole student). ``STAGES`` maps the
config's ``stage`` field to them; ``base.Stage`` documents what a stage decides."""

from rehyat_jax.train.stages.base import RunContext, Stage
from rehyat_jax.train.stages.distill import DistillStage
from rehyat_jax.train.stages.finetune import FinetuneStage

STAGES: dict[str, type[Stage]] = {stage.name: stage for stage in (DistillStage, FinetuneStage)}

__all__ = ["STAGES", "DistillStage", "FinetuneStage", "RunContext", "Stage"]
