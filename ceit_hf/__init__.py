"""CeiT (Convolution-enhanced image Transformer) for Hugging Face transformers. Importing the package registers
`model_type="ceit"` with the Auto classes and marks the classes for Hub remote code."""

from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from .configuration_ceit import PRESETS, CeiTConfig
from .image_processing_ceit import CeiTImageProcessor, CeiTImageProcessorPil
from .inference import optimize_for_inference
from .modeling_ceit import (
    CeiTBackbone,
    CeiTForImageClassification,
    CeiTImageClassifierOutput,
    CeiTModel,
    CeiTModelOutput,
    CeiTPreTrainedModel,
)


__version__ = "0.2.0"

AutoConfig.register(CeiTConfig.model_type, CeiTConfig, exist_ok=True)
AutoModel.register(CeiTConfig, CeiTModel, exist_ok=True)
AutoModelForImageClassification.register(CeiTConfig, CeiTForImageClassification, exist_ok=True)
AutoBackbone.register(CeiTConfig, CeiTBackbone, exist_ok=True)
_processors = {"torchvision": CeiTImageProcessor, "pil": CeiTImageProcessorPil}
AutoImageProcessor.register(CeiTConfig, image_processor_classes=_processors, exist_ok=True)
CeiTConfig.register_for_auto_class()
CeiTModel.register_for_auto_class("AutoModel")
CeiTForImageClassification.register_for_auto_class("AutoModelForImageClassification")
CeiTBackbone.register_for_auto_class("AutoBackbone")
CeiTImageProcessor.register_for_auto_class()
CeiTImageProcessorPil.register_for_auto_class()

__all__ = [
    "PRESETS",
    "CeiTBackbone",
    "CeiTConfig",
    "CeiTForImageClassification",
    "CeiTImageClassifierOutput",
    "CeiTImageProcessor",
    "CeiTImageProcessorPil",
    "CeiTModel",
    "CeiTModelOutput",
    "CeiTPreTrainedModel",
    "optimize_for_inference",
]
