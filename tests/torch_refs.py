"""Reference PyTorch models shared by the tests (torchvision / timm with random statistics)."""

import pytest


def randomize_batchnorm(net):
    """Random BatchNorm affine parameters and running statistics, so that eval-mode BN matters."""
    import torch
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net


def torch_resnet(name: str, in_chans: int, seed: int = 0, *, keep_fc: bool = True):
    """torchvision ``name`` with an ``in_chans`` conv1 (fc kept, or an Identity), random BN."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)()
    net.conv1 = torch.nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
    if not keep_fc:
        net.fc = torch.nn.Identity()
    return randomize_batchnorm(net)
