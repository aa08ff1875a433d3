"""The BentoML service that classifies Fashion-MNIST images over HTTP."""
