"""Small class-conditional GAN for 1- or 3-channel images (MultiGAN's synthetic retain / forget data)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConditionalGenerator(nn.Module):
    """``(z, class) -> image`` in ``[0, 1]``, shape ``(B, C, S, S)``; ``S`` divisible by 4.

    Args:
        num_classes: Number of classes.
        image_size: Output side ``S``.
        latent_dim: Dimension of ``z``.
        width: Channels of the first feature map.
        channels: Image channels ``C``.
    """

    def __init__(self, num_classes: int, image_size: int, latent_dim: int = 32, width: int = 32,
                 channels: int = 1) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        self.latent_dim, self.side = latent_dim, image_size // 4
        self.embed = nn.Embedding(num_classes, latent_dim)
        self.fc = nn.Linear(2 * latent_dim, width * self.side**2)
        self.width = width
        self.net = nn.Sequential(
            nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.BatchNorm2d(width // 2), nn.ReLU(),
            nn.ConvTranspose2d(width // 2, channels, 4, 2, 1), nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.embed(labels)], dim=-1)).view(-1, self.width, self.side, self.side)
        return self.net(h)

    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(len(labels), self.latent_dim, generator=generator).to(labels.device)
        return self(z, labels)


class ConditionalDiscriminator(nn.Module):
    """Projection discriminator (Miyato & Koyama, 2018): ``(image, class) -> real/fake logit``."""

    def __init__(self, num_classes: int, width: int = 32, channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width // 2, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width // 2, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.out = nn.Linear(width, 1)
        self.embed = nn.Embedding(num_classes, width)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.features(images)
        return self.out(h).squeeze(-1) + (self.embed(labels) * h).sum(-1)


def fit_conditional_gan(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 2e-4,
    latent_dim: int = 32,
    width: int = 32,
    seed: int = 0,
) -> ConditionalGenerator:
    """Train a :class:`ConditionalGenerator` on ``images`` ``(N, C, S, S)`` in ``[0, 1]`` with labels ``(N,)``
    (non-saturating GAN loss, Adam(0.5, 0.999)); returns the generator in eval mode."""
    device = images.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        gen = ConditionalGenerator(num_classes, images.shape[-1], latent_dim, width, images.shape[1]).to(device)
        disc = ConditionalDiscriminator(num_classes, width, images.shape[1]).to(device)
        opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
        with torch.enable_grad():
            for _ in range(steps):
                idx = torch.randint(0, len(images), (min(batch_size, len(images)),), device=device)
                real, y = images[idx], labels[idx]
                fake = gen(torch.randn(len(y), latent_dim, device=device), y)
                d_loss = F.softplus(-disc(real, y)).mean() + F.softplus(disc(fake.detach(), y)).mean()
                opt_d.zero_grad()
                d_loss.backward()
                opt_d.step()
                g_loss = F.softplus(-disc(fake, y)).mean()
                opt_g.zero_grad()
                g_loss.backward()
                opt_g.step()
    return gen.eval().requires_grad_(False)
