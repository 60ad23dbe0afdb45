"""What a user sees of a run: metrics.jsonl and TensorBoard writers, the progress line, image
grids and caption tables, report.html."""
