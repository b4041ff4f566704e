"""Tiled, streaming prediction over images far larger than memory (torch, numpy, dask, zarr; no napari, no Qt).

* :mod:`.tiling`: crop-and-stitch blocks (:func:`plan_blocks`, :func:`order_blocks`): output regions that
  tile the image on a grid (matching output zarr chunks), input regions grown by a halo and clipped to the
  image, aligned for U-Nets;
* :mod:`.predictor`: :class:`Predictor` reads only each block's input (prefetched by reader threads),
  cuts network inputs as in training, batches them on the device and yields :class:`BlockDone` events,
  optionally writing labels and probabilities into numpy or zarr arrays;
* :mod:`.halo`: :func:`measure_effective_halo`, the context a trained network really needs.

Example::

    predictor = Predictor.from_file("model.msd", device="auto")
    labels = zarr.create_array("labels.zarr", shape=image.shape, dtype="uint8",
                               chunks=predictor.default_block_shape(image.shape))
    for done in predictor.run(image, labels_out=labels, first=(slice(40, 41),)):
        print(done.block.index, f"{done.seconds:.2f} s")
"""

from .halo import measure_effective_halo
from .predictor import DEFAULT_MEMORY_BUDGET, BlockDone, Predictor
from .tiling import Block, order_blocks, plan_blocks

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "Block",
    "BlockDone",
    "Predictor",
    "measure_effective_halo",
    "order_blocks",
    "plan_blocks",
]
