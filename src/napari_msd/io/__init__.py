"""Reading and writing trained models as single, code-free safetensors files (no napari, no Qt)."""

from .model_file import FORMAT_VERSION, ModelFileError, ModelMetadata, load_model, read_metadata, save_model

__all__ = ["FORMAT_VERSION", "ModelFileError", "ModelMetadata", "load_model", "read_metadata", "save_model"]
