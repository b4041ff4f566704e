"""The base below training and inference: how a volume is cut into network inputs, intensity normalisation, and
the device a network runs on (numpy and torch; no napari, no Qt)."""
