"""The small conditional GAN used by MultiGAN."""

from __future__ import annotations

import pytest
import torch

from medforget.models.gan import ConditionalDiscriminator, ConditionalGenerator, fit_conditional_gan


def test_generator_and_discriminator_shapes():
    gen = ConditionalGenerator(num_classes=4, image_size=32, latent_dim=8, width=16)
    labels = torch.tensor([0, 1, 2, 3])
    images = gen.sample(labels, torch.Generator().manual_seed(0))
    assert images.shape == (4, 1, 32, 32) and images.min() >= 0 and images.max() <= 1
    assert ConditionalDiscriminator(4, 16)(images, labels).shape == (4,)
    with pytest.raises(ValueError, match="divisible by 4"):
        ConditionalGenerator(4, 30)


def test_fit_is_seeded_and_learns_the_class_conditional_mean():
    # class 0 images are dark, class 1 bright: after training the generator must follow the condition
    images = torch.cat([torch.full((32, 1, 16, 16), 0.1), torch.full((32, 1, 16, 16), 0.9)])
    labels = torch.cat([torch.zeros(32), torch.ones(32)]).long()
    gen = fit_conditional_gan(images, labels, num_classes=2, steps=150, width=16, latent_dim=8, lr=2e-3, seed=0)
    again = fit_conditional_gan(images, labels, num_classes=2, steps=150, width=16, latent_dim=8, lr=2e-3, seed=0)
    z = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    y = torch.cat([torch.zeros(8), torch.ones(8)]).long()
    out = gen(z, y)
    assert torch.equal(out, again(z, y)), "same seed, same generator"
    assert out[8:].mean() > out[:8].mean() + 0.3
    assert not any(p.requires_grad for p in gen.parameters())


def test_three_channel_images():
    """A 3-channel classifier (--data.channels 3) gets 3-channel synthetic images."""
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1] * 4)
    gen = fit_conditional_gan(images, labels, num_classes=2, steps=2, width=8, latent_dim=4)
    assert gen.sample(labels).shape == (8, 3, 16, 16)
    assert ConditionalDiscriminator(2, 8, channels=3)(images, labels).shape == (8,)
