"""Sampling: flow-matching schedules, UniPC / Euler solvers, classifier-free guidance, sampler loops.

``sample`` is the entry point; ``unipc_flow_schedule`` / ``euler_flow_schedule`` build the host
tables it runs on (bit-identical to diffusers' and the original Wan2.1 schedulers'), and
``euler_step`` / ``unipc_step`` are the pure per-step solvers it scans.
"""

from rehyat_jax.sampling.guidance import (WAN_NEGATIVE_PROMPT, WAN_NEGATIVE_PROMPT_EN,
                                          WAN_T2V_1_3B_GUIDANCE_SCALE, WAN_T2V_1_3B_SHIFT_RANGE,
                                          WAN_T2V_GUIDANCE_SCALE, WAN_T2V_SAMPLING_STEPS,
                                          WAN_T2V_SHIFT, cfg_combine)
from rehyat_jax.sampling.sampler import SOLVERS, sample
from rehyat_jax.sampling.schedules import (UNIPC_VARIANTS, FlowSchedule, euler_flow_schedule,
                                           shift_sigmas, unipc_flow_schedule)
from rehyat_jax.sampling.solvers import (MAX_UNIPC_ORDER, UniPCState, UniPCTables, euler_step,
                                         unipc_init, unipc_step, unipc_step_orders, unipc_tables)

__all__ = [
    "FlowSchedule", "MAX_UNIPC_ORDER", "SOLVERS", "UNIPC_VARIANTS", "UniPCState", "UniPCTables",
    "WAN_NEGATIVE_PROMPT", "WAN_NEGATIVE_PROMPT_EN", "WAN_T2V_1_3B_GUIDANCE_SCALE",
    "WAN_T2V_1_3B_SHIFT_RANGE", "WAN_T2V_GUIDANCE_SCALE", "WAN_T2V_SAMPLING_STEPS", "WAN_T2V_SHIFT",
    "cfg_combine", "euler_flow_schedule", "euler_step", "sample", "shift_sigmas",
    "unipc_flow_schedule", "unipc_init", "unipc_step", "unipc_step_orders", "unipc_tables",
]
