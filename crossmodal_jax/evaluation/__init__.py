"""End-of-run evaluation on the test split: tokenizer reconstruction and codebook health,
text→image sample quality, X→text caption scores (evaluate.py runs them all)."""
