"""Config blocks (every default, blocks.py), checks run before anything else (validation.py)
and a workdir's resolved config (workdir.py)."""
