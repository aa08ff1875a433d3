"""The peer servers of ``python -m benchmark.peers``: one small file per framework, each run in its own venv.

Each file serves the same ONNX model on the same preprocessing through :mod:`.common`, so that only
the framework differs. They import nothing of ours beyond :mod:`fashion.contract` (numpy only) and
:mod:`.common`; ``benchmark.peers`` installs each framework into a cached venv and starts the file
there with the repository on ``PYTHONPATH``.
"""
