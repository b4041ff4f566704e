"""Files in and out, with no napari and no Qt: model files, lazy image readers, prediction outputs."""

from .images import ImageReadError, LazyArray, image_info, open_image, read_labels
from .job import JobSpec
from .model_file import FORMAT_VERSION, ModelFileError, ModelMetadata, load_model, read_metadata, save_model
from .outputs import OutputError, PredictionOutput, create_or_resume, open_output

__all__ = [
    "FORMAT_VERSION",
    "ModelFileError",
    "ModelMetadata",
    "load_model",
    "read_metadata",
    "save_model",
    "ImageReadError",
    "LazyArray",
    "image_info",
    "open_image",
    "read_labels",
    "JobSpec",
    "OutputError",
    "PredictionOutput",
    "create_or_resume",
    "open_output",
]
