"""Encoders: 3D image encoders by name, text encoders from local folders, the dual encoder."""

from medalign.models.config import ImageModelConfig, ModelConfig, TextModelConfig
from medalign.models.dual import DualEncoder
from medalign.models.image import IMAGE_ENCODERS, ImageEncoder, create_image_encoder
from medalign.models.text import TextEncoder

__all__ = ["DualEncoder", "IMAGE_ENCODERS", "ImageEncoder", "ImageModelConfig", "ModelConfig", "TextEncoder", "TextModelConfig", "create_image_encoder"]
