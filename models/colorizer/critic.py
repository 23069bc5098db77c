"""The critic of the NoGAN schedule: a patch discriminator that judges whether colours fit the picture.

It sees L together with ab, so it learns "a sky this bright is blue, not brown" rather than "colourful
pictures are real". Spectral normalization keeps it Lipschitz, which keeps the short GAN phase stable on
small batches. Training only: the critic is never exported.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class Critic(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for cout in (width, 2 * width, 4 * width, 8 * width):
            layers += [spectral_norm(nn.Conv2d(cin, cout, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        layers.append(spectral_norm(nn.Conv2d(cin, 1, 3, 1, 1)))
        self.net = nn.Sequential(*layers)

    def forward(self, L: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        """Patch scores ``[B, 1, H/16, W/16]``: high for real colour, low for generated."""
        return self.net(torch.cat([L * 2.0 - 1.0, ab], 1))


def critic_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss for the critic."""
    return torch.relu(1.0 - real).mean() + torch.relu(1.0 + fake).mean()


def adversarial_loss(fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss for the generator: raise the critic's score of its colours."""
    return -fake.mean()
