"""What is computed from an annotated IR: the stats table, diffs, fitting, reference tables."""
