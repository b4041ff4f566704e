"""Objects from a semantic prediction: connected components, watershed split, measurements (no napari, no Qt).

Every step works block by block on arrays larger than memory (numpy, zarr, dask, napari-msd's lazy readers),
in 2D and 3D, and is a generator of :class:`Progress` events that returns its result (a napari worker can
drive it unchanged; :func:`run_to_end`, or the plain functions, just run it):

* :func:`iter_components` / :func:`label_components` (:mod:`.components`): objects of each class, merged across
  blocks, equal to a whole-volume labelling up to the numbering;
* :func:`iter_split` / :func:`split_objects` (:mod:`.split`): watershed split of touching objects per object;
* :func:`iter_measure` / :func:`measure_objects` (:mod:`.measure`): a table per object, :func:`write_csv`;
* :func:`iter_objects` (:mod:`.pipeline`): all three, as ``napari-msd measure`` runs them.
"""

from .blocks import MEMORY, choose_block_shape
from .components import Components, iter_components, label_components
from .measure import ObjectMeasurer, iter_measure, measure_objects
from .pipeline import ObjectsResult, iter_objects
from .progress import Progress, run_to_end
from .scale import Scale, ome_scale
from .split import Boxes, Split, iter_boxes, iter_split, split_object, split_objects
from .table import ObjectTable, TableWriteError, write_csv

__all__ = [
    "MEMORY",
    "Boxes",
    "Components",
    "ObjectMeasurer",
    "ObjectTable",
    "ObjectsResult",
    "Progress",
    "Scale",
    "Split",
    "TableWriteError",
    "choose_block_shape",
    "iter_boxes",
    "iter_components",
    "iter_measure",
    "iter_objects",
    "iter_split",
    "label_components",
    "measure_objects",
    "ome_scale",
    "run_to_end",
    "split_object",
    "split_objects",
    "write_csv",
]
