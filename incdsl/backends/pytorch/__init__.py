"""The PyTorch backend: the model file writer, its template and reserved names, the
IR interpreter, and PyTorch's memory rules."""
