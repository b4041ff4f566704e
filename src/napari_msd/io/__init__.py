"""Reading and writing trained models as single, code-free safetensors files (no napari, no Qt)."""

from .images import ImageReadError, LazyArray, image_info, open_image, read_labels
from .model_file import FORMAT_VERSION, ModelFileError, ModelMetadata, load_model, read_metadata, save_model

__all__ = [
    "FORMAT_VERSION", "ModelFileError", "ModelMetadata", "load_model", "read_metadata", "save_model",
    "ImageReadError", "LazyArray", "image_info", "open_image", "read_labels",
]
