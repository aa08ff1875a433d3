"""Train the Fashion-MNIST MLP in PyTorch and TensorFlow/Keras on one shared split."""
