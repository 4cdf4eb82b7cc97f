"""The layer and merge kinds: one table of what each kind means."""
