"""Side-by-side benchmark of every backend: in-process, over HTTP, with accuracy (``python -m benchmark``)."""
