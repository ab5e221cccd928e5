"""CeiT model tests, in the layout of transformers' `tests/models/vit/test_modeling_vit.py`. transformers' own
`ModelTesterMixin` and siblings run against CeiT in CI's next step (tests/transformers_suite/run.py: save/load,
determinism, outputs equivalence, training and gradient checkpointing, ...), so `CeiTModelTest` here keeps only what
those do not check for CeiT (the backbone's embeddings, an index selecting a hidden state, the LCA's attentions, the
official initialisation, attention implementations), followed by CeiT's own: every option, the official model,
outputs, sizes."""

import copy
import inspect
import itertools
import json
import math
import unittest

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ceit_tester import CeiTModelTester
from conftest import assert_same_training_results, tiny_config
from official_reference import official_forward, random_official_state_dict
from transformers import AutoModel, AutoModelForImageClassification
from transformers.modeling_outputs import ImageClassifierOutput

from ceit_hf import CeiTBackbone, CeiTConfig, CeiTForImageClassification, CeiTModel
from ceit_hf.conversion import convert_official_state_dict, infer_config
from ceit_hf.modeling_ceit import CeiTLayerScale, CeiTPatchEmbeddings


class CeiTModelTest(unittest.TestCase):
    """What transformers' `ModelTesterMixin` leaves out for CeiT's model classes."""

    all_model_classes = (CeiTModel, CeiTForImageClassification)

    def setUp(self):
        torch.manual_seed(0)
        self.model_tester = CeiTModelTester(self)

    def test_forward_signature(self):
        for model_class in self.all_model_classes:
            arguments = list(inspect.signature(model_class.forward).parameters)
            self.assertEqual(arguments[:2], ["self", "pixel_values"])

    def test_model_get_set_embeddings(self):
        """The input embeddings are the patch projection (`_input_embed_layer = "patch_embeddings"`), and
        transformers' `set_input_embeddings` replaces the module the forward pass uses."""
        for model_class in (*self.all_model_classes, CeiTBackbone):
            model = model_class(self.model_tester.get_config()).eval()
            embeddings = getattr(model, model.base_model_prefix, model).embeddings
            self.assertIs(model.get_input_embeddings(), embeddings.patch_embeddings)
            replacement = CeiTPatchEmbeddings(model.config)
            model.set_input_embeddings(replacement)
            self.assertIs(embeddings.patch_embeddings, replacement)
            self.assertIs(model.get_input_embeddings(), replacement)
            calls = []
            replacement.register_forward_hook(lambda *args: calls.append(1))
            with torch.no_grad():
                model(**self.model_tester.prepare_config_and_inputs_for_common()[1])
            self.assertEqual(len(calls), 1, model_class.__name__)

    def test_hidden_states_output(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        tester = self.model_tester
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            for request in ({"output_hidden_states": True}, {}):
                cfg = copy.deepcopy(config)
                if not request:
                    cfg.output_hidden_states = True  # the config flag asks as well
                model = model_class(cfg).eval()
                hidden = model(**inputs, **request).hidden_states
                self.assertEqual(len(hidden), tester.num_hidden_layers + 1)
                self.assertEqual(hidden[0].shape, (tester.batch_size, tester.seq_length, tester.hidden_size))
            self.assertIsNone(model_class(config).eval()(**inputs).hidden_states)
            # an index selects one hidden state
            selected = model_class(config).eval()(**inputs, output_hidden_states=-1).hidden_states
            self.assertEqual(sum(h is not None for h in selected), 1)

    def test_attention_outputs(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        tester = self.model_tester
        config._attn_implementation = "eager"
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            out = model(**inputs, output_attentions=True)
            self.assertEqual(len(out.attentions), tester.num_hidden_layers)
            shape = (tester.batch_size, tester.num_attention_heads, tester.seq_length, tester.seq_length)
            self.assertEqual(out.attentions[0].shape, shape)
            (lca,) = out.lca_attentions
            self.assertEqual(lca.shape, (tester.batch_size, tester.num_attention_heads, 1, tester.num_hidden_layers))
            self.assertIsNone(model(**inputs).attentions)

    def test_initialization(self):
        """The official initialisation (`CeiTPreTrainedModel._init_weights`), for the default tester configuration
        and one with every optional weight (biases, LayerScale, convolutional patchify, MLP head)."""
        normal_layers = (
            "attention.qkv",
            "attention.proj",
            "mlp.fc1",
            "mlp.fc2",
            "classifier",
            "classifier.dense",
            "classifier.out_proj",
        )
        uniform_layers = (
            "image_to_tokens.conv",
            "patch_embeddings.projection",
            "leff.expand",
            "leff.depthwise",
            "leff.pointwise",
            "leff.reduce",
        )
        every_weight = tiny_config(
            qkv_bias=True,
            lca_encoder_qkv_bias=True,
            layer_scale=0.1,
            lca_encoder_layer_scale=0.2,
            patchify_technique="conv",
            i2t_conv_bias=True,
            classifier_mlp_d=16,
        )
        for config, model_class in itertools.product(
            (self.model_tester.get_config(), every_weight), self.all_model_classes
        ):
            model, std = model_class(config), config.initializer_range
            normal = []  # every value drawn from N(0, std)

            def assert_normal(name, values):
                # timm's trunc_normal_(std=0.02) as the official code calls it cuts at +-2 absolute: a plain normal.
                # The sample's std and mean within 5 standard errors.
                values = values.detach().double().flatten()
                normal.append(values)
                self.assertLess(abs(values.std().item() / std - 1), 5 / math.sqrt(2 * values.numel()), name)
                self.assertLess(abs(values.mean().item()), 5 * std / math.sqrt(values.numel()), name)

            for name, module in model.named_modules():
                if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and name.endswith(normal_layers):
                    assert_normal(name, module.weight)
                    self.assertTrue(module.bias is None or not module.bias.any(), name)
                elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                    # PyTorch's default for a convolution (and the Linear layers standing for the official 1x1 and
                    # patch convolutions): kaiming_uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)), bias as well.
                    self.assertTrue(name.endswith(uniform_layers), f"{name}: a layer this test does not know")
                    bound = 1 / math.sqrt(module.weight[0].numel())
                    weight = module.weight.detach().double()
                    self.assertLessEqual(weight.abs().max().item(), bound, name)
                    self.assertGreater(weight.abs().max().item(), 0.9 * bound, name)  # spread to the bound
                    self.assertLess(
                        abs(weight.std().item() * math.sqrt(3) / bound - 1), 2.5 / math.sqrt(weight.numel()), name
                    )  # a uniform's std, within 5 standard errors
                    if module.bias is not None:
                        self.assertLessEqual(module.bias.abs().max().item(), bound, name)
                        self.assertTrue(module.bias.any(), name)
                elif isinstance(module, (torch.nn.LayerNorm, torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                    self.assertTrue((module.weight == 1).all() and (module.bias == 0).all(), name)
                    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                        self.assertTrue((module.running_mean == 0).all() and (module.running_var == 1).all(), name)
                        self.assertEqual(module.num_batches_tracked.item(), 0, name)
            base = getattr(model, "ceit", model)
            assert_normal("cls_token", base.embeddings.cls_token)
            assert_normal("position_embeddings", base.embeddings.position_embeddings)
            self.assertFalse(base.lca.layer_position_embeddings.any())
            scales = [(m.lambda1, m.init_value) for m in model.modules() if isinstance(m, CeiTLayerScale)]
            self.assertEqual(len(scales), 2 * config.num_encoder_blocks + 2 if config.layer_scale else 0)
            for values, init_value in scales:
                self.assertTrue((values == init_value).all())
            self.assertEqual({init_value for _, init_value in scales}, {0.1, 0.2} if config.layer_scale else set())
            # a plain normal has 4.55% of its values beyond 2 std (a normal cut at 2 std: none)
            beyond = (torch.cat(normal).abs() > 2 * std).double().mean().item()
            self.assertTrue(0.035 < beyond < 0.056, beyond)

    def test_attention_implementations_agree(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = CeiTForImageClassification(config).eval()
        with torch.no_grad():
            reference = model(**inputs).logits
            for implementation in ("eager", "flex_attention"):
                model.set_attn_implementation(implementation)
                self.assertLess((model(**inputs).logits - reference).abs().max().item(), 1e-5, implementation)


def pixels(batch=2, size=32, channels=3, width=None):
    return torch.randn(batch, channels, size, width or size)


def official_model(sd, **overrides):
    model = CeiTForImageClassification(infer_config(sd, **overrides)).eval()
    model.load_state_dict(convert_official_state_dict(sd), strict=True)
    return model


# --- every seed option, forward and backward -------------------------------------------------------------------

SEED_GRID = list(
    itertools.product(
        ["pre", "post"],  # ln_order
        ["pre", "post"],  # lca_encoder_ln_order
        ["linear", "conv"],  # patchify_technique
        [True, False],  # leff_depthwise_separable
        [None, 1e-3],  # layer_scale (encoder and LCA)
        [False, True],  # stochastic_depth
        [None, 16],  # classifier_mlp_d
    )
)


@pytest.mark.parametrize("ln, lca_ln, patchify, separable, scale, stodepth, mlp_d", SEED_GRID)
def test_seed_option_combinations_train(ln, lca_ln, patchify, separable, scale, stodepth, mlp_d):
    config = tiny_config(
        ln_order=ln,
        lca_encoder_ln_order=lca_ln,
        patchify_technique=patchify,
        leff_depthwise_separable=separable,
        layer_scale=scale,
        lca_encoder_layer_scale=scale,
        stochastic_depth=stodepth,
        stochastic_depth_mp=0.2 if stodepth else None,
        lca_encoder_stodepth_prob=0.1 if stodepth else 0.0,
        classifier_mlp_d=mlp_d,
    )
    model = CeiTForImageClassification(config).train()
    out = model(pixels(), labels=torch.tensor([1, 3]))
    assert out.logits.shape == (2, 5) and torch.isfinite(out.logits).all()
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert isinstance(model.classifier, torch.nn.Linear) == (mlp_d is None)
    assert isinstance(model.ceit.layernorm, torch.nn.LayerNorm) == (lca_ln == "pre")


@pytest.mark.parametrize(
    "overrides",
    [
        {"qkv_bias": True, "lca_encoder_qkv_bias": True},
        {"leff_batch_norm": False},
        {"leff_final_activation": False},
        {"lca_layer_position_embedding": False},
        {"patch_norm": False},
        {"i2t_conv_bias": True},
        {
            "dropout": 0.1,
            "encoder_dropout": 0.1,
            "encoder_attention_dropout": 0.1,
            "encoder_projection_dropout": 0.1,
            "lca_encoder_dropout": 0.1,
            "lca_encoder_attention_dropout": 0.1,
            "lca_encoder_projection_dropout": 0.1,
            "classifier_mlp_d": 8,
        },
        {"in_channels": 1},
        {"leff_depthwise_kernel": 5, "leff_depthwise_padding": 2},
        {"image_size": [32, 48]},
        {"num_classes": 0},
    ],
)
def test_extra_options_train(overrides):
    config = tiny_config(**overrides)
    model = CeiTForImageClassification(config).train()
    height, width = config.image_hw
    out = model(pixels(channels=config.in_channels, size=height, width=width))
    expected_width = config.num_labels or config.d_model
    assert out.logits.shape == (2, expected_width) and torch.isfinite(out.logits).all()
    out.logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_option_structure():
    model = CeiTModel(tiny_config(qkv_bias=False, lca_encoder_qkv_bias=True, leff_batch_norm=False))
    assert model.encoder.layers[0].attention.qkv.bias is None
    assert model.lca.attention.qkv.bias is not None
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.encoder.modules())
    model = CeiTModel(tiny_config(lca_layer_position_embedding=False, patch_norm=False))
    assert model.lca.layer_position_embeddings is None
    assert isinstance(model.embeddings.patch_embeddings.norm, torch.nn.Identity)
    # Dropout placement: embeddings use `dropout`, LeFF `encoder_dropout`, attention probabilities and projections
    # their own rates, the LCA MLP `lca_encoder_dropout`.
    model = CeiTModel(
        tiny_config(
            dropout=0.1,
            encoder_dropout=0.2,
            encoder_attention_dropout=0.3,
            encoder_projection_dropout=0.4,
            lca_encoder_dropout=0.5,
            lca_encoder_attention_dropout=0.6,
            lca_encoder_projection_dropout=0.7,
        )
    )
    layer = model.encoder.layers[0]
    assert model.embeddings.dropout.p == 0.1
    assert layer.leff.dropout.p == 0.2
    assert layer.attention.attention_dropout == 0.3 and layer.attention.proj_dropout.p == 0.4
    assert model.lca.mlp.dropout.p == 0.5
    assert model.lca.attention.attention_dropout == 0.6 and model.lca.attention.proj_dropout.p == 0.7
    model = CeiTModel(tiny_config(stochastic_depth=True, stochastic_depth_mp=0.3, lca_encoder_stodepth_prob=0.05))
    assert [layer.drop_path.drop_prob for layer in model.encoder.layers] == pytest.approx([0.0, 0.3])
    assert model.lca.drop_path.drop_prob == 0.05


def test_post_norm_order_puts_layernorm_after_the_residual():
    model = CeiTModel(tiny_config(ln_order="post")).eval()
    layer = model.encoder.layers[0]
    x = torch.randn(2, 17, 32)
    out = layer(x, (4, 4))
    # Post-norm output is LayerNorm output: zero mean, unit variance per token (LayerNorm weight 1, bias 0).
    assert out.mean(-1).abs().max() < 1e-5
    assert (out.var(-1, unbiased=False) - 1).abs().max() < 1e-3


# --- the official model -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size, depth", [(224, 2), (384, 1)])
def test_matches_independent_official_forward(image_size, depth):
    sd = random_official_state_dict(width=192, heads=3, depth=depth, image_size=image_size)
    model = official_model(sd)
    x = torch.randn(2, 3, image_size, image_size)
    expected = official_forward(sd, x, heads=3)
    with torch.no_grad():
        assert torch.allclose(model(x).logits, expected, atol=1e-5)
        model.set_attn_implementation("eager")
        assert torch.allclose(model(x).logits, expected, atol=1e-5)


def test_eager_and_sdpa_agree():
    for config in (tiny_config(), CeiTConfig.from_preset("ceit_tiny_patch16_224", num_encoder_blocks=2)):
        model = CeiTForImageClassification(config).eval()
        assert model.config._attn_implementation == "sdpa"
        size = config.image_hw[0]
        x = pixels(size=size)
        with torch.no_grad():
            sdpa = model(x).logits
            model.set_attn_implementation("eager")
            eager = model(x).logits
        assert (sdpa - eager).abs().max() < 1e-5


def test_every_attention_module_is_not_causal():
    model = CeiTModel(tiny_config())
    attention = [m for m in model.modules() if hasattr(m, "qkv")]
    assert len(attention) == 3 and all(m.is_causal is False for m in attention)


def test_initialisation_follows_the_official_scheme():
    config = CeiTConfig.from_preset("ceit_small_patch16_224", num_encoder_blocks=2)
    model = CeiTForImageClassification(config)
    layer = model.ceit.encoder.layers[0]
    qkv = layer.attention.qkv.weight
    # timm's trunc_normal_(std=0.02), as the official code calls it: cut at +-2 absolute, i.e. a plain normal.
    assert abs(qkv.std().item() - 0.02) < 0.002 and abs(qkv.mean().item()) < 0.001
    assert (layer.attention.qkv.bias == 0).all() and (model.classifier.bias == 0).all()
    # LeFF's Linear layers are the official 1x1 convolutions: PyTorch's default uniform(+-1/sqrt(fan_in)).
    expand = layer.leff.expand.weight
    bound = 1 / math.sqrt(expand.shape[1])
    assert expand.abs().max() <= bound and expand.abs().max() > 0.9 * bound
    assert (model.ceit.lca.layer_position_embeddings == 0).all()
    assert abs(model.ceit.embeddings.position_embeddings.std().item() - 0.02) < 0.003
    assert (layer.norm1.weight == 1).all() and (layer.leff.expand_norm.weight == 1).all()
    assert (layer.leff.expand_norm.running_var == 1).all()
    scaled = CeiTModel(tiny_config(layer_scale=1e-3))
    assert torch.allclose(scaled.encoder.layers[0].layer_scale1.lambda1, torch.full((32,), 1e-3))


# --- outputs ---------------------------------------------------------------------------------------------------


def test_output_shapes_and_counts():
    config = tiny_config(num_encoder_blocks=3)
    model = CeiTModel(config).eval()
    model.set_attn_implementation("eager")  # attention probabilities exist on the eager path only
    out = model(pixels(batch=3), output_attentions=True, output_hidden_states=True)
    assert out.last_hidden_state.shape == (3, 17, 32)
    assert out.pooler_output.shape == (3, 32)
    assert len(out.hidden_states) == 4 and all(h.shape == (3, 17, 32) for h in out.hidden_states)
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    assert len(out.attentions) == 3 and all(a.shape == (3, 2, 17, 17) for a in out.attentions)
    assert torch.allclose(out.attentions[0].sum(-1), torch.ones(3, 2, 17), atol=1e-5)
    (lca,) = out.lca_attentions  # recorded by OutputRecorder, a tuple like `attentions`
    assert lca.shape == (3, 2, 1, 3) and torch.allclose(lca.sum(-1), torch.ones(3, 2, 1), atol=1e-5)
    plain = model(pixels(batch=3))
    assert plain.hidden_states is None and plain.attentions is None and plain.lca_attentions is None


def test_classifier_output_and_tuple_equivalence():
    model = CeiTForImageClassification(tiny_config(attn_implementation="eager")).eval()
    x = pixels()
    out = model(x, labels=torch.tensor([0, 1]), output_attentions=True, output_hidden_states=True)
    assert isinstance(out, ImageClassifierOutput)
    assert len(out.lca_attentions) == 1 and len(out.attentions) == 2 and len(out.hidden_states) == 3
    as_tuple = model(x, labels=torch.tensor([0, 1]), return_dict=False)
    assert torch.allclose(as_tuple[0], out.loss, atol=1e-6) and torch.allclose(as_tuple[1], out.logits, atol=1e-6)
    # The classifier sees the pooled LCA token.
    base = model.ceit(x)
    assert torch.allclose(model.classifier(base.pooler_output), out.logits)


def test_config_flags_request_outputs():
    config = tiny_config(output_hidden_states=True)
    out = CeiTModel(config)(pixels())
    assert len(out.hidden_states) == 3


def test_problem_types():
    x = pixels()
    model = CeiTForImageClassification(tiny_config()).eval()
    labels = torch.tensor([1, 4])
    out = model(x, labels=labels)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels))
    model.config.problem_type = "multi_label_classification"
    targets = torch.tensor([[1.0, 0, 1, 0, 0], [0, 0, 0, 1, 1]])
    out = model(x, labels=targets)
    assert torch.allclose(out.loss, F.binary_cross_entropy_with_logits(out.logits, targets))
    regression = CeiTForImageClassification(tiny_config(num_classes=1)).eval()
    values = torch.tensor([0.5, -1.0])
    out = regression(x, labels=values)
    assert regression.config.problem_type == "regression"
    assert torch.allclose(out.loss, F.mse_loss(out.logits.squeeze(-1), values))


def test_batch_equivalence_and_determinism_in_eval():
    model = CeiTForImageClassification(CeiTConfig.from_preset("ceit_tiny_patch16_224", num_encoder_blocks=2)).eval()
    x = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        batched = model(x).logits
        again = model(x).logits
        single = torch.cat([model(x[i : i + 1]).logits for i in range(4)])
    assert torch.equal(batched, again)
    assert (batched - single).abs().max() < 1e-5


def test_batch_norm_statistics_untouched_in_eval():
    model = CeiTForImageClassification(tiny_config()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model(pixels())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.train()
    model(pixels())
    assert not torch.equal(
        before["ceit.encoder.layers.0.leff.expand_norm.running_mean"],
        model.ceit.encoder.layers[0].leff.expand_norm.running_mean,
    )


def test_training_reduces_the_loss():
    model = CeiTForImageClassification(tiny_config()).train()
    x, labels = pixels(batch=8), torch.arange(8) % 5
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(x, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# --- save / load ------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    model = CeiTForImageClassification(tiny_config(id2label={i: f"class{i}" for i in range(5)})).eval()
    model.train()(pixels())  # move the BatchNorm statistics away from their initial values
    model.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    x = pixels()
    for loader in (CeiTForImageClassification, AutoModelForImageClassification):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert type(loaded) is CeiTForImageClassification
        assert loaded.config.id2label[3] == "class3"
        with torch.no_grad():
            assert torch.equal(loaded(x).logits, model(x).logits)
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is CeiTModel
    assert torch.equal(
        base.encoder.layers[0].leff.expand_norm.running_mean,
        model.ceit.encoder.layers[0].leff.expand_norm.running_mean,
    )
    eager = CeiTForImageClassification.from_pretrained(tmp_path, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"


def test_reheading_for_fine_tuning(tmp_path):
    model = CeiTForImageClassification(tiny_config())
    model.save_pretrained(tmp_path)
    tuned = CeiTForImageClassification.from_pretrained(tmp_path, num_labels=3, ignore_mismatched_sizes=True)
    assert tuned.classifier.out_features == 3 and tuned.config.num_labels == 3
    assert torch.equal(tuned.ceit.embeddings.position_embeddings, model.ceit.embeddings.position_embeddings)
    assert tuned(pixels()).logits.shape == (2, 3)


# --- image sizes ------------------------------------------------------------------------------------------------


def test_other_sizes_need_interpolate_pos_encoding():
    model = CeiTForImageClassification(tiny_config()).eval()
    with pytest.raises(ValueError, match=r"\(48x48\) doesn't match the model \(32x32\)"):
        model(pixels(size=48))
    out = model(pixels(size=48), interpolate_pos_encoding=True, output_hidden_states=True)
    assert out.hidden_states[0].shape == (2, 1 + 6 * 6, 32)
    out = model(pixels(size=32, width=64), interpolate_pos_encoding=True, output_hidden_states=True)
    assert out.hidden_states[0].shape == (2, 1 + 4 * 8, 32)
    with pytest.raises(ValueError, match="does not tile"):
        model(pixels(size=36), interpolate_pos_encoding=True)
    x = pixels()
    with torch.no_grad():
        assert torch.equal(model(x, interpolate_pos_encoding=True).logits, model(x).logits)


def test_official_preset_at_384_and_non_square():
    model = CeiTForImageClassification(CeiTConfig.from_preset("ceit_tiny_patch16_224", num_encoder_blocks=1)).eval()
    for height, width, grid in ((384, 384, (24, 24)), (224, 320, (14, 20))):
        with torch.no_grad():
            out = model(torch.randn(1, 3, height, width), interpolate_pos_encoding=True, output_hidden_states=True)
        assert out.hidden_states[0].shape[1] == 1 + grid[0] * grid[1]
        assert torch.isfinite(out.logits).all()


def test_interpolated_position_embeddings_keep_the_class_embedding():
    embeddings = CeiTModel(tiny_config()).embeddings
    resized = embeddings.interpolate_pos_encoding((6, 8))
    assert resized.shape == (1, 49, 32)
    assert torch.equal(resized[:, 0], embeddings.position_embeddings[:, 0])


# --- gradient checkpointing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_changes_nothing(use_reentrant):
    config = tiny_config(stochastic_depth=True, stochastic_depth_mp=0.2)
    reference = CeiTForImageClassification(config).train()
    checkpointed = CeiTForImageClassification(config).train()
    checkpointed.load_state_dict(reference.state_dict())
    checkpointed.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert all(layer.gradient_checkpointing for layer in checkpointed.ceit.encoder.layers)
    x, labels = pixels(batch=4), torch.tensor([0, 1, 2, 3])
    losses = []
    for model in (reference, checkpointed):
        torch.manual_seed(123)
        loss = model(x, labels=labels).loss
        loss.backward()
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    assert_same_training_results(checkpointed, reference)
    tracked = checkpointed.ceit.encoder.layers[0].leff.expand_norm.num_batches_tracked
    assert tracked.item() == 1


def saved_for_backward(model, x, labels) -> tuple[torch.Tensor, int]:
    """(the loss, the bytes autograd saves for the backward pass outside checkpointed blocks) of a training step of
    `model`, its backward pass included."""
    sizes = []

    def pack(tensor):
        sizes.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(x, labels=labels).loss
    loss.backward()
    return loss, sum(sizes)


def test_activation_checkpointing_every_n_layers_and_offload():
    """`activation_checkpointing_enable(every_n_layers=2)` checkpoints blocks 0 and 2 of 3, which saves less for the
    backward pass than no checkpointing and more than checkpointing every block; `offload=True` (its saved inputs in
    host memory) checkpoints every block. Each computes the loss, gradients and BatchNorm statistics of the model
    without checkpointing (offload on CPU too)."""
    config = tiny_config(num_encoder_blocks=3, stochastic_depth=True, stochastic_depth_mp=0.2)
    reference = CeiTForImageClassification(config).train()
    variants = {
        (1, False): copy.deepcopy(reference),
        (2, False): copy.deepcopy(reference),
        (1, True): copy.deepcopy(reference),
    }
    x, labels = pixels(batch=4), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(123)
    expected_loss, saved = saved_for_backward(reference, x, labels)
    checkpointed = {}
    for (every_n_layers, offload), model in variants.items():
        model.activation_checkpointing_enable(every_n_layers=every_n_layers, offload=offload)
        flags = [layer.gradient_checkpointing for layer in model.ceit.encoder.layers]
        assert flags == [True, every_n_layers == 1, True]
        torch.manual_seed(123)
        loss, checkpointed[every_n_layers, offload] = saved_for_backward(model, x, labels)
        torch.testing.assert_close(loss, expected_loss)
        assert_same_training_results(model, reference)
    assert checkpointed[1, False] < checkpointed[2, False] < saved
    assert checkpointed[1, True] < saved


# --- bad inputs ------------------------------------------------------------------------------------------------

BAD_MODEL_INPUTS = {
    "channels-last batch": (lambda: torch.randn(2, 32, 32, 3), {}, r"non-empty; got shape \(2, 32, 32, 3\)"),
    "RGBA batch": (lambda: torch.randn(2, 4, 32, 32), {}, r"shape \(batch_size, 3, height, width\), non-empty"),
    "grayscale batch": (lambda: torch.randn(2, 1, 32, 32), {}, r"non-empty; got shape \(2, 1, 32, 32\)"),
    "2-D tensor": (lambda: torch.randn(32, 32), {}, r"shape \(batch_size, 3, height, width\) .* got \(32, 32\)"),
    "3-D tensor": (lambda: torch.randn(3, 32, 32), {}, r"shape \(batch_size, 3, height, width\)"),
    "int64 pixels": (lambda: torch.randint(0, 255, (2, 3, 32, 32)), {}, "a float tensor .* got .* torch.int64"),
    "uint8 pixels": (lambda: torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), {}, "float tensor"),
    "bool pixels": (lambda: torch.zeros(2, 3, 32, 32, dtype=torch.bool), {}, "a float tensor .* torch.bool"),
    "complex pixels": (lambda: torch.zeros(2, 3, 32, 32, dtype=torch.complex64), {}, "a float tensor"),
    "numpy array": (lambda: np.zeros((2, 3, 32, 32), np.float32), {}, "must be a float tensor of shape"),
    "nested list": (lambda: [[0.0]], {}, "float tensor of shape"),
    "non-square": (lambda: torch.randn(2, 3, 32, 48), {}, r"\(32x48\) doesn't match the model \(32x32\)"),
    "smaller": (lambda: torch.randn(2, 3, 16, 16), {}, r"\(16x16\) doesn't match .* interpolate_pos_encoding=True"),
    "empty batch": (lambda: torch.randn(0, 3, 32, 32), {}, "non-empty"),
    "empty batch, other size": (lambda: torch.randn(0, 3, 48, 48), {"interpolate_pos_encoding": True}, "non-empty"),
    "1x1 with interpolation": (lambda: torch.randn(2, 3, 1, 1), {"interpolate_pos_encoding": True}, "does not tile"),
    "0x0 with interpolation": (lambda: torch.randn(2, 3, 0, 0), {"interpolate_pos_encoding": True}, "does not tile"),
    "None": (lambda: None, {}, "specify pixel_values"),
}


@pytest.mark.parametrize("name", list(BAD_MODEL_INPUTS))
@pytest.mark.parametrize("cls", [CeiTForImageClassification, CeiTModel])
def test_bad_model_inputs_raise_clear_value_errors(cls, name):
    make, kwargs, message = BAD_MODEL_INPUTS[name]
    model = cls(tiny_config()).eval()
    with pytest.raises(ValueError, match=message):
        model(make(), **kwargs)


def test_channel_count_is_checked_for_other_channel_counts():
    model = CeiTForImageClassification(tiny_config(in_channels=1)).eval()
    with pytest.raises(
        ValueError, match=r"shape \(batch_size, 1, height, width\), non-empty; got shape \(2, 3, 32, 32\)"
    ):
        model(torch.randn(2, 3, 32, 32))
    assert model(torch.randn(2, 1, 32, 32)).logits.shape == (2, 5)


@pytest.mark.parametrize("keyword", ["head_mask", "bool_masked_pos", "output_hiden_states", "attention_mask"])
def test_unknown_forward_keywords_raise_type_error(keyword):
    for model in (CeiTForImageClassification(tiny_config()), CeiTModel(tiny_config())):
        with pytest.raises(TypeError, match=keyword):
            model(pixels(), **{keyword: True})


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_input_of_another_float_dtype_is_cast_to_the_model_dtype(dtype):
    model = CeiTForImageClassification(tiny_config()).eval()
    x = pixels().to(dtype)
    with torch.no_grad():
        logits = model(x).logits
        assert logits.dtype == torch.float32
        assert torch.equal(logits, model(x.float()).logits)


def test_input_embeddings_are_the_patch_embeddings():
    model = CeiTModel(tiny_config())
    assert model.get_input_embeddings() is model.embeddings.patch_embeddings


def test_torch_sync_batchnorm_conversion_keeps_weights_and_function():
    model = CeiTForImageClassification(tiny_config()).train()
    model(pixels(batch=4))  # non-trivial running statistics
    model.eval()
    x = pixels()
    with torch.no_grad():
        before = model(x).logits
    keys = set(model.state_dict())
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(model.ceit.encoder.layers[0].leff.expand_norm, torch.nn.SyncBatchNorm)
    assert isinstance(model.ceit.embeddings.image_to_tokens.norm, torch.nn.SyncBatchNorm)
    assert set(model.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(model(x).logits, before)


@pytest.mark.parametrize("layer_checkpointing", [None, {"use_reentrant": True}, {"use_reentrant": False}])
def test_leff_recomputation_changes_no_result(layer_checkpointing):
    """LeFF recomputation computes the same loss, gradients and BatchNorm statistics (updated once) as storing the
    activations, with and without whole-layer activation checkpointing on top; with both on, LeFF runs twice (the
    forward and one replay), not three times."""
    config = tiny_config(stochastic_depth=True, stochastic_depth_mp=0.2, leff_depthwise_separable=False)
    stored, recomputed = CeiTForImageClassification(config), CeiTForImageClassification(config)
    recomputed.load_state_dict(stored.state_dict())
    stored.set_leff_recompute(False)
    recomputed.set_leff_recompute(True)
    if layer_checkpointing is not None:
        recomputed.activation_checkpointing_enable(activation_checkpointing_kwargs=layer_checkpointing)
    x, labels = pixels(batch=4), torch.tensor([0, 1, 2, 3])
    calls = {"stored": [], "recomputed": []}
    for name, model in (("stored", stored), ("recomputed", recomputed)):
        model.ceit.encoder.layers[0].leff.depthwise.register_forward_hook(lambda *args, n=name: calls[n].append(1))
        torch.manual_seed(7)
        model.train()(x, labels=labels).loss.backward()
    assert (len(calls["stored"]), len(calls["recomputed"])) == (1, 2)
    assert_same_training_results(recomputed, stored)
    assert recomputed.ceit.encoder.layers[0].leff.expand_norm.num_batches_tracked.item() == 1


def saved_tensor_bytes(model, x, labels) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one training forward (each storage once)."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.train()(x, labels=labels)
    return sum(storages.values())


def test_stem_recomputation_changes_no_result_and_keeps_less():
    """Recomputing the stem's BatchNorm output and max-pool indices gives the same loss, gradients and BatchNorm
    statistics (updated once) as storing them, runs the pool once more, and keeps at least the normalised map and
    the indices (1.5x the convolution's output) out of what autograd saves."""
    stored, recomputed = CeiTForImageClassification(tiny_config()), CeiTForImageClassification(tiny_config())
    recomputed.load_state_dict(stored.state_dict())
    stored.set_stem_recompute(False)
    recomputed.set_stem_recompute(True)
    x, labels = pixels(batch=4), torch.tensor([0, 1, 2, 3])
    calls = {"stored": [], "recomputed": []}
    for name, model in (("stored", stored), ("recomputed", recomputed)):
        # A pre-hook: the replay stops inside the pool once it has what the backward pass needs.
        model.ceit.embeddings.image_to_tokens.pool.register_forward_pre_hook(lambda *a, n=name: calls[n].append(1))
        model.train()(x, labels=labels).loss.backward()
    assert (len(calls["stored"]), len(calls["recomputed"])) == (1, 2)
    assert_same_training_results(recomputed, stored)
    assert recomputed.ceit.embeddings.image_to_tokens.norm.num_batches_tracked.item() == 1
    stem_map = stored.ceit.embeddings.image_to_tokens.conv(x).numel() * x.element_size()
    saved = {name: saved_tensor_bytes(model, x, labels) for name, model in (("stored", stored), ("re", recomputed))}
    assert saved["stored"] - saved["re"] >= 1.5 * stem_map


@pytest.mark.parametrize("switch", ["set_leff_recompute", "set_stem_recompute"])
def test_recompute_is_a_runtime_switch(tmp_path, switch):
    """ "auto" recomputes on CPU only; the switch is not saved, and configs saved with the old key still load."""
    model = CeiTForImageClassification(tiny_config()).train()
    embeddings, layer = model.ceit.embeddings, model.ceit.encoder.layers[0]
    module = layer.leff if switch == "set_leff_recompute" else embeddings.image_to_tokens
    assert module.recomputes(torch.zeros(1))
    assert not module.recomputes(torch.zeros(1, device="meta"))
    getattr(model, switch)(False)
    assert not module.recomputes(torch.zeros(1))
    with pytest.raises(ValueError, match=f"{switch} takes True, False or 'auto'"):
        getattr(model, switch)("yes")
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert not any("recompute" in key for key in saved)
    saved["leff_recompute_activations"] = False  # written by ceit_hf 0.2
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = CeiTForImageClassification.from_pretrained(tmp_path)
    assert loaded.ceit.encoder.layers[0].leff.recompute_activations is None
    assert not hasattr(loaded.config, "leff_recompute_activations")
