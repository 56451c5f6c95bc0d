"""ml_collections configs, one file per job (see common.py for the fields)."""
