"""Clients of the service: benchmark tooling now; the Python client and batch CLI come next."""
