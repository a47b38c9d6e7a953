"""Training: cases and their cached slices, augmentation, losses, the training loop, RTSTRUCT import."""
