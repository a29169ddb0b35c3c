"""Views of a model that need no gradients: layers, filters, feature maps, predictions."""
