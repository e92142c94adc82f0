"""Networks: the classifier architectures by name, and pretrained weights with their preprocessing."""
