"""Stages a config trains: the tokenizer (stage 1) and the generator (stage 2), each a
`training.stage.StageSpec` built from the `Experiment` (registry.py lists them)."""
