"""A toy world for seeing distillation work end to end on CPU: procedural videos (``video``) and the
export of a trained run as a converted checkpoint a teacher or student loads (``export``)."""
