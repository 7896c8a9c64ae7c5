"""Data sets (where images come from) and the pipelines that feed them to the model."""
