"""napari-msd: train Mixed-Scale Dense networks and U-Nets from a few painted strokes.

The package root imports nothing heavy: the core lives in ``models``, ``base``, ``io``,
``inference`` and ``training`` (no napari, no Qt); the napari docks live in ``_widgets``.
"""

__version__ = "0.1.0"
