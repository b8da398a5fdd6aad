"""Neural network models: ViT backbones with their checkpoint converters, and DreamSim."""
