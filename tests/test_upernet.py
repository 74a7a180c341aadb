"""geossl.eval.upernet against segmentation-models-pytorch's UPerNet decoder and torch's ops,
with the same weights: pooling and resizing steps, the decoder on a stage pyramid (BatchNorm in
inference and in training mode), and the plain-ViT neck in front of it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geossl.eval import segmentation_heads as heads
from geossl.eval import upernet

torch = pytest.importorskip("torch")
smp_decoder = pytest.importorskip("segmentation_models_pytorch.decoders.upernet.decoder")
smp_base = pytest.importorskip("segmentation_models_pytorch.base")
F = torch.nn.functional

CHANNELS, CLASSES = 12, 5


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _nchw(a):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("size,out", [(2, 6), (5, 3), (7, 2), (4, 4), (1, 3)])
def test_adaptive_pool_and_resize_match_torch(size, out):
    x = np.random.default_rng(size * 10 + out).normal(size=(2, size, size + 1, 3)).astype(
        np.float32)
    pooled = upernet.adaptive_avg_pool(jnp.asarray(x), out)
    want = _nhwc(F.adaptive_avg_pool2d(_nchw(x), out))
    np.testing.assert_allclose(np.asarray(pooled), want, atol=1e-6)
    resized = upernet.resize_bilinear(jnp.asarray(x), (out, out + 2))
    want = _nhwc(F.interpolate(_nchw(x), size=(out, out + 2), mode="bilinear",
                               align_corners=False))
    np.testing.assert_allclose(np.asarray(resized), want, atol=1e-6)


def _randomize(module, seed):
    """Random conv weights (std 1/√fan-in: outputs of order 1) and BatchNorm affine parameters
    and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                fan_in = m.weight[0].numel() if isinstance(m, torch.nn.Conv2d) else m.in_channels
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / fan_in ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))


def _conv_block(seq):
    """smp Conv2dReLU (conv, BatchNorm, ReLU) → (params, batch_stats) of a ``ConvBlock``."""
    conv, bn = seq[0], seq[1]
    params = {"conv": {"kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0)},
              "bn": {"scale": bn.weight.detach().numpy(), "bias": bn.bias.detach().numpy()}}
    stats = {"bn": {"mean": bn.running_mean.numpy(), "var": bn.running_var.numpy()}}
    return params, stats


def _decoder_variables(decoder, classifier, num_levels):
    """smp's decoder + 1×1 classifier → UPerNetHead variables (lateral / fpn blocks are stored
    deepest first in smp)."""
    params, stats = {}, {}

    def put(name, seq):
        params[name], stats[name] = _conv_block(seq)

    for k, block in enumerate(decoder.psp.blocks):
        put(f"ppm_{k}", block[1])
    put("bottleneck", decoder.psp.out_conv)
    for j in range(num_levels - 1):
        put(f"lateral_{num_levels - 2 - j}", decoder.fpn_lateral_blocks[j].conv_norm_relu)
        put(f"fpn_{num_levels - 2 - j}", decoder.fpn_conv_blocks[j])
    put("fpn_bottleneck", decoder.fusion_block)
    params["classifier"] = {"kernel": classifier.weight.detach().numpy().transpose(2, 3, 1, 0),
                            "bias": classifier.bias.detach().numpy()}
    return {"params": params, "batch_stats": stats}


def _smp(in_channels, seed):
    """smp's UPerNet decoder (without its per-level LayerNorm, which mmseg's UPerHead and
    PANGAEA do not have) and a 1×1 classifier, randomly weighted."""
    decoder = smp_decoder.UPerNetDecoder(encoder_channels=(3, 3, *in_channels), encoder_depth=5,
                                         decoder_channels=CHANNELS)
    decoder.feature_norms = torch.nn.ModuleList([torch.nn.Identity() for _ in in_channels])
    classifier = smp_base.SegmentationHead(CHANNELS, CLASSES, kernel_size=1)[0]
    _randomize(decoder, seed)
    _randomize(classifier, seed + 1)
    return decoder, classifier


def _shapes(head, levels):
    """The shapes of the head's variables (no compute)."""
    return jax.tree.map(lambda a: a.shape, jax.eval_shape(head.init, jax.random.key(0), levels))


def _smp_logits(decoder, classifier, levels):
    dummy = [torch.zeros(1)] * 2  # smp drops its full- and half-resolution features
    return _nhwc(classifier(decoder(dummy + [_nchw(x) for x in levels])))


@pytest.mark.parametrize("train", [False, True])
def test_upernet_matches_smp_on_a_stage_pyramid(train):
    """ResNet-like stage maps of a 32 px image (8, 4, 2, 1 px): the PPM pools a 1 × 1 map to
    2 × 2, 3 × 3 and 6 × 6 and back."""
    rng = np.random.default_rng(0)
    channels = (8, 16, 24, 32)
    levels = [rng.normal(size=(3, s, s, c)).astype(np.float32)
              for s, c in zip((8, 4, 2, 1), channels)]
    decoder, classifier = _smp(channels, seed=1)
    decoder.train(train)
    with torch.no_grad():
        want = _smp_logits(decoder, classifier, levels)
    head = heads.build_head("upernet", [x.shape for x in levels], CLASSES, channels=CHANNELS,
                            dropout=0.0)
    assert head.rescales is None  # a pyramid is used as it is
    variables = _decoder_variables(decoder, classifier, len(levels))
    assert _shapes(head, levels) == jax.tree.map(np.shape, variables)  # nothing left over
    got = jax.jit(lambda v, x: head.apply(v, x, train=train, mutable=["batch_stats"])[0])(
        variables, levels)
    assert got.shape == (3, 8, 8, CLASSES)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


class TorchNeck(torch.nn.Module):
    """The plain-ViT neck ×4 / ×2 / ×1 / ×0.5 from torch layers (BEiT's Feature2Pyramid)."""

    def __init__(self, dim):
        super().__init__()
        self.up4 = torch.nn.Sequential(torch.nn.ConvTranspose2d(dim, dim, 2, 2),
                                       torch.nn.BatchNorm2d(dim), torch.nn.GELU(),
                                       torch.nn.ConvTranspose2d(dim, dim, 2, 2))
        self.up2 = torch.nn.ConvTranspose2d(dim, dim, 2, 2)

    def forward(self, levels):
        return [self.up4(levels[0]), self.up2(levels[1]), levels[2],
                F.max_pool2d(levels[3], 2, 2)]


def test_upernet_with_the_vit_neck_matches_torch():
    """Four blocks of a ViT on a 5 × 5 patch grid (odd: the max pool floors to 2 × 2)."""
    rng = np.random.default_rng(2)
    dim = 16
    levels = [rng.normal(size=(2, 5, 5, dim)).astype(np.float32) for _ in range(4)]
    neck = TorchNeck(dim)
    _randomize(neck, seed=3)
    decoder, classifier = _smp((dim,) * 4, seed=4)
    neck.eval(), decoder.eval()
    with torch.no_grad():
        pyramid = neck([_nchw(x) for x in levels])
        want = _nhwc(classifier(decoder([torch.zeros(1)] * 2 + pyramid)))
    head = heads.build_head("upernet", [x.shape for x in levels], CLASSES, channels=CHANNELS)
    assert head.rescales == (4, 2, 1, 0.5)
    variables = _decoder_variables(decoder, classifier, 4)

    def up(conv):
        return {"kernel": conv.weight.detach().numpy().transpose(2, 3, 0, 1),
                "bias": conv.bias.detach().numpy()}

    bn = neck.up4[1]
    variables["params"]["neck_0"] = {
        "up_0": up(neck.up4[0]), "up_1": up(neck.up4[3]),
        "bn": {"scale": bn.weight.detach().numpy(), "bias": bn.bias.detach().numpy()}}
    variables["batch_stats"]["neck_0"] = {"bn": {"mean": bn.running_mean.numpy(),
                                                 "var": bn.running_var.numpy()}}
    variables["params"]["neck_1"] = {"up_0": up(neck.up2)}
    assert _shapes(head, levels) == jax.tree.map(np.shape, variables)
    got = jax.jit(head.apply)(variables, levels)
    assert got.shape == want.shape == (2, 20, 20, CLASSES)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


def test_default_blocks_are_mmseg_s():
    assert upernet.default_blocks(12) == (3, 5, 7, 11)
    assert upernet.default_blocks(24) == (7, 11, 15, 23)
    assert upernet.default_blocks(4) == (0, 1, 2, 3)
    assert upernet.plain_rescales(4) == (4, 2, 1, 0.5)
