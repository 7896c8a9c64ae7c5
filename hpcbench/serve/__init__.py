"""Serving a trained run: command-line predictions and a Gradio page (top-3 classes)."""
