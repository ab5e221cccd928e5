"""CeiT (Convolution-enhanced image Transformer) for Hugging Face transformers.

Importing the package registers `model_type="ceit"` with the transformers Auto classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification
from transformers import AutoImageProcessor

from .configuration_ceit import PRESETS, CeiTConfig
from .image_processing_ceit import CeiTImageProcessor, CeiTImageProcessorPil
from .modeling_ceit import (
    CeiTForImageClassification,
    CeiTImageClassifierOutput,
    CeiTModel,
    CeiTModelOutput,
    CeiTPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(CeiTConfig.model_type, CeiTConfig, exist_ok=True)
AutoModel.register(CeiTConfig, CeiTModel, exist_ok=True)
AutoModelForImageClassification.register(CeiTConfig, CeiTForImageClassification, exist_ok=True)
AutoImageProcessor.register(
    CeiTConfig,
    image_processor_classes={"torchvision": CeiTImageProcessor, "pil": CeiTImageProcessorPil},
    exist_ok=True,
)

__all__ = [
    "PRESETS",
    "CeiTConfig",
    "CeiTForImageClassification",
    "CeiTImageProcessor",
    "CeiTImageProcessorPil",
    "CeiTImageClassifierOutput",
    "CeiTModel",
    "CeiTModelOutput",
    "CeiTPreTrainedModel",
]
