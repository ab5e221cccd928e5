"""`CeiTModelTester`: tiny configurations and inputs for the model tests, in the layout of transformers'
`tests/models/vit/test_modeling_vit.py` (and usable with transformers' own `ModelTesterMixin`)."""

import torch

from ceit_hf import CeiTConfig, CeiTForImageClassification, CeiTModel


class CeiTModelTester:
    def __init__(
        self,
        parent,
        batch_size=2,
        image_size=32,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        i2t_out_channels=8,
        patch_size=2,
        num_labels=5,
        is_training=True,
        use_labels=True,
        **config_overrides,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.i2t_out_channels = i2t_out_channels
        self.patch_size = patch_size
        self.num_labels = num_labels
        self.is_training = is_training
        self.use_labels = use_labels
        self.config_overrides = config_overrides
        # 32x32 pixels -> 8x8 stem map -> 4x4 tokens, plus the class token
        self.seq_length = (image_size // 4 // patch_size) ** 2 + 1

    def get_config(self) -> CeiTConfig:
        return CeiTConfig(
            image_size=self.image_size,
            in_channels=self.num_channels,
            d_model=self.hidden_size,
            num_encoder_blocks=self.num_hidden_layers,
            encoder_num_heads=self.num_attention_heads,
            i2t_out_channels=self.i2t_out_channels,
            patch_size=self.patch_size,
            num_classes=self.num_labels,
            **{"classifier_mlp_d": None, **self.config_overrides},
        )

    def prepare_config_and_inputs(self):
        pixel_values = torch.randn(self.batch_size, self.num_channels, self.image_size, self.image_size)
        labels = torch.randint(0, self.num_labels, (self.batch_size,)) if self.use_labels else None
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}

    def create_and_check_model(self, config, pixel_values, labels):
        model = CeiTModel(config).eval()
        with torch.no_grad():
            result = model(pixel_values)
        expected = (self.batch_size, self.seq_length, self.hidden_size)
        self.parent.assertEqual(result.last_hidden_state.shape, expected)
        self.parent.assertEqual(result.pooler_output.shape, (self.batch_size, self.hidden_size))

    def create_and_check_for_image_classification(self, config, pixel_values, labels):
        model = CeiTForImageClassification(config).eval()
        with torch.no_grad():
            result = model(pixel_values, labels=labels)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.num_labels))
        self.parent.assertTrue(torch.isfinite(result.loss))
