"""Passes over the IR: the annotating passes (shapes, counts, channels) and the inference plan."""
