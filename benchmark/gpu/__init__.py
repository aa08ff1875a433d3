"""The GPU benchmark: ``python -m benchmark.gpu`` (``benchmark/gpu.sh`` on a GPU server).

Modules: ``carry`` (wheels and inputs to a machine with no package index), ``ceilings``
(the card's matmul and host-to-device copy rates), ``variants`` (every GPU backend in-process),
``endtoend`` (uint8 on the host to answers on the host), ``serving`` (the service and the
batch CLI on the GPU), ``report`` (Markdown, JSON, plots; which providers really ran).
"""
