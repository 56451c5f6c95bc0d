"""How close a student is to its teacher: metrics (``metrics``), the ladder of models and measurements
(``ladder``), its table / JSON / plots / strip (``report``), the teacher's attention by frame distance
(``attention_distance``) and the command (``cli``, ``python -m rehyat_jax.evaluate``)."""
