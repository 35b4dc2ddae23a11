"""The continuous PyTorch training daemon (needs the ``train`` extra)."""
