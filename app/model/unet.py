"""A residual 2D UNet sized for a laptop CPU.

The shape follows GaNDLF's ResUNet: every stage is a residual block (two 3x3 conv + BatchNorm +
ReLU with a 1x1 projection on the shortcut), four resolution levels joined by skip connections,
stride-2 convolutions down and transposed convolutions up. Every op here (Conv, BatchNorm folded
into Conv at export, ReLU, ConvTranspose, Concat, Sigmoid) converts cleanly to ONNX opset 17,
OpenVINO IR and Ascend ATC, and quantizes well with NNCF.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a (projected) shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = (
            nn.Identity()
            if c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class Down(nn.Module):
    """Halve the resolution with a learned stride-2 conv (cheaper than pool + conv)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.down = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )
        self.block = ResidualBlock(c_out, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.down(x))


class Up(nn.Module):
    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
        self.block = ResidualBlock(c_out + c_skip, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class ResUNet(nn.Module):
    """Residual UNet with `levels` resolution levels below the input (input side must divide 2**levels).

    Returns logits (N, classes, H, W); `ProbabilityHead` wraps it for export so that every
    runtime outputs probabilities directly.
    """

    def __init__(self, in_channels: int = 3, classes: int = 1, base: int = 16, levels: int = 4):
        super().__init__()
        self.config = {"in_channels": in_channels, "classes": classes, "base": base, "levels": levels}
        widths = [base * 2**i for i in range(levels + 1)]
        self.stem = ResidualBlock(in_channels, widths[0])
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1]) for i in range(levels))
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], widths[i]) for i in reversed(range(levels)))
        self.head = nn.Conv2d(widths[0], classes, 1)

    @property
    def multiple(self) -> int:
        """Input height and width must be a multiple of this."""
        return 2 ** self.config["levels"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)


class ProbabilityHead(nn.Module):
    """The exported graph: logits -> sigmoid, so engines return tumour probability."""

    def __init__(self, net: ResUNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
