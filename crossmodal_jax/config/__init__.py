"""Config blocks (every default: run_blocks.py and model_blocks.py, one namespace: blocks.py),
checks run before anything else (validation.py) and a workdir's resolved config (workdir.py)."""
