"""Training from sparse painted labels: sampling, augmentation, losses, validation and the engine."""
