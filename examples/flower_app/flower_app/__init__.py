"""An image-classification Flower app (PyTorch, Message API) audited by gradleak."""
