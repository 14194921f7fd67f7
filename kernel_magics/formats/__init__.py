"""Model formats: loading a registered version's folder, shared by the inference process and
the kernel (see loaders.py)."""
