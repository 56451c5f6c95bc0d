"""A toy world for seeing distillation work end to end on CPU: procedural videos (``video``), the
export of a trained run as a converted checkpoint a teacher or student loads (``export``), and
``teacher_dit/``: the toy teacher trained by configs/toy_teacher.py (2.4 MB, float32; its
conversion.json states the recipe), shipped so the demo can distil a model with real attention
structure in minutes. ``./launch/toy_fidelity.sh main`` retrains it."""

from pathlib import Path

SHIPPED_TEACHER = Path(__file__).resolve().parent / "teacher_dit"
