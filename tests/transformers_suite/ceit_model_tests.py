"""CeiT against transformers' own `ModelTesterMixin`, `PipelineTesterMixin` and `ConfigTester`.

Laid out as transformers' `tests/models/vit/test_modeling_vit.py`. `run.py` copies this file to
`tests/models/ceit/test_modeling_ceit.py` of a tree built from the transformers sdist; it does not run from here.
`CEIT_TESTER_CONFIG` picks the configuration: "seed" (the seed API's defaults) or "official" (the official models'
architecture), both at tiny sizes.
"""

import os
import unittest

from torch import nn
from transformers.testing_utils import require_torch

from ceit_hf import PRESETS, CeiTBackbone, CeiTConfig, CeiTForImageClassification, CeiTModel

from ...test_backbone_common import BackboneTesterMixin
from ...test_configuration_common import ConfigTester
from ...test_modeling_common import ModelTesterMixin
from ...test_pipeline_mixin import PipelineTesterMixin
from .ceit_tester import CeiTModelTester


SIZE_OPTIONS = ("d_model", "encoder_num_heads", "num_encoder_blocks", "image_size", "patch_size", "num_labels")


def config_overrides() -> dict:
    name = os.environ.get("CEIT_TESTER_CONFIG", "seed")
    if name == "seed":
        return {"classifier_mlp_d": 24}  # the seed API's MLP head, narrower
    if name == "official":
        official = PRESETS["ceit_tiny_patch16_224"]
        return {k: v for k, v in official.items() if k not in SIZE_OPTIONS and k != "i2t_out_channels"}
    raise ValueError(f"CEIT_TESTER_CONFIG={name!r} is invalid: expected 'seed' or 'official'.")


def make_tester(parent) -> CeiTModelTester:
    return CeiTModelTester(parent, **config_overrides())


@require_torch
class CeiTModelTest(ModelTesterMixin, PipelineTesterMixin, unittest.TestCase):
    all_model_classes = (CeiTModel, CeiTForImageClassification)
    pipeline_model_mapping = {
        "image-feature-extraction": CeiTModel,
        "image-classification": CeiTForImageClassification,
    }
    test_resize_embeddings = False
    has_attentions = True

    def setUp(self):
        self.model_tester = make_tester(self)
        self.config_tester = ConfigTester(
            self, config_class=CeiTConfig, has_text_modality=False, d_model=36, encoder_num_heads=6
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model_get_set_embeddings(self):
        # As ViT's test: a vision model's input embeddings are its patch projection and it has no output embeddings.
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), nn.Module)
            self.assertIsNone(model.get_output_embeddings())

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_for_image_classification(self):
        self.model_tester.create_and_check_for_image_classification(*self.model_tester.prepare_config_and_inputs())


@require_torch
class CeiTBackboneTest(BackboneTesterMixin, unittest.TestCase):
    all_model_classes = (CeiTBackbone,)
    config_class = CeiTConfig
    has_attentions = False

    def setUp(self):
        self.model_tester = make_tester(self)
