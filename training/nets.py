"""The two members: a 3D DynUNet and a 2D UNet++ with scSE attention (MONAI nets, hand-written scSE)."""

from __future__ import annotations

import torch
from monai.networks.nets import BasicUNetPlusPlus, DynUNet
from torch import nn


class SCSE(nn.Module):
    """Concurrent spatial and channel squeeze & excitation (Roy et al. 2018), as in SPARSeg's decoder."""

    def __init__(self, channels: int, reduction: int = 4, spatial_dims: int = 2):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        pool = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d
        hidden = max(channels // reduction, 2)
        self.cse = nn.Sequential(pool(1), conv(channels, hidden, 1), nn.ReLU(inplace=True), conv(hidden, channels, 1),
                                 nn.Sigmoid())
        self.sse = nn.Sequential(conv(channels, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.cse(x) + x * self.sse(x)


class _WithSCSE(nn.Module):
    def __init__(self, block: nn.Module, channels: int, spatial_dims: int):
        super().__init__()
        self.block = block
        self.scse = SCSE(channels, spatial_dims=spatial_dims)

    def forward(self, *args):
        return self.scse(self.block(*args))


class UNetPPSCSE(nn.Module):
    """MONAI BasicUNetPlusPlus with an scSE block after every encoder and decoder node; returns logits."""

    def __init__(self, in_channels: int, features=(16, 32, 48, 64, 128, 16), spatial_dims: int = 2):
        super().__init__()
        self.net = BasicUNetPlusPlus(spatial_dims, in_channels, 1, features=features, deep_supervision=False,
                                     norm=("batch", {"eps": 1e-5, "momentum": 0.1}))
        f = features
        for name in [n for n, _ in self.net.named_children() if n.startswith(("conv_", "upcat_"))]:
            level = int(name.split("_")[1])
            ch = f[5] if (name.startswith("upcat_0")) else f[level]
            setattr(self.net, name, _WithSCSE(getattr(self.net, name), ch, spatial_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def build_3d(in_channels: int, filters=(16, 32, 48, 96)) -> nn.Module:
    # in-plane strides 2 at every level, z only at the two deepest: divisible_by (4, 8, 8)
    return DynUNet(3, in_channels, 1, kernel_size=[3, 3, 3, 3], strides=[1, (1, 2, 2), 2, 2],
                   upsample_kernel_size=[(1, 2, 2), 2, 2], filters=list(filters), res_block=True,
                   norm_name="batch")


def build(kind: str, in_channels: int, arch: dict) -> nn.Module:
    if kind == "3d":
        return build_3d(in_channels, tuple(arch.get("filters", (16, 32, 48, 96))))
    return UNetPPSCSE(in_channels, tuple(arch.get("features", (16, 32, 48, 64, 128, 16))))


class WithSigmoid(nn.Module):
    """What is exported: logits -> probabilities inside the graph."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))
