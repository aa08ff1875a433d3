"""The Python client of the service, its batch CLI and the local (no-server) classifier."""
