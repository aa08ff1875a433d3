"""The contract every stage of fashion-serve shares.

Class names, the model input contract, preprocessing, softmax, the verified
Fashion-MNIST loader and the one train/validation split live here, so that
training, export, the service and the clients cannot drift apart.
"""
