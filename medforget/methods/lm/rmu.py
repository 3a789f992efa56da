"""RMU (Li et al., 2024, "The WMDP Benchmark", representation misdirection for unlearning): steer the layer-``l``
activations of forget text towards a fixed random direction, ``L_f = MSE(h_theta^l(x_f), c u)``, and keep those of
retain text where the original model has them, ``L_r = MSE(h_theta^l(x_r), h_ref^l(x_r))``; only the MLPs of layers
``l-2 .. l`` are updated."""

from __future__ import annotations

from typing import Any

import torch

from medforget.methods.lm.base import LMUnlearningMethod
from medforget.systems.lm import ClinicalLM


def decoder_layers(model: ClinicalLM) -> torch.nn.ModuleList:
    """The decoder blocks of the causal LM (Llama, Mistral, Qwen, ...: ``model.model.layers``)."""
    decoder = model.lm.get_decoder()
    if not hasattr(decoder, "layers"):
        raise TypeError(f"RMU cannot find the decoder layers of {type(model.lm).__name__}")
    return decoder.layers


def layer_activations(model: ClinicalLM, batch: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """The output of decoder block ``layer`` (0-based; the residual stream after it) ``[B, T, D]``."""
    caught: list[torch.Tensor] = []

    def hook(module, args, output):
        caught.append(output[0] if isinstance(output, tuple) else output)

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        model(batch)
    finally:
        handle.remove()
    return caught[0]


def masked_mse(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error of ``[B, T, D]`` activations over the positions where ``mask`` ``[B, T]`` is 1."""
    err = (x.float() - target.float()).square().mean(-1)  # (B, T)
    return (err * mask).sum() / mask.sum().clamp_min(1)


class RMU(LMUnlearningMethod):
    """Representation misdirection: forget text's activations at ``layer`` are pushed to ``steering_coef * u``
    (``u`` a seeded random unit vector, a buffer saved in checkpoints), retain text's are held at the original
    model's. Every token position of the texts counts (attention mask) except the forget texts' first, ``<s>``: its
    activation is the same for every text, so steering it would only fight the retain term. Only the parameters whose
    names contain ``params`` in the ``update_layers`` train (the others are frozen: ``requires_grad`` off).
    ``retain_loss`` is ignored: the retain term is always the activation MSE. The defaults (larger ``lr`` and smaller
    ``alpha`` than the paper's 7B settings) unlearn the default 128-wide, 4-layer model in the CLI's 5 epochs.

    Args:
        lr: AdamW learning rate.
        alpha: Weight of the retain (activation-matching) loss.
        layer: Decoder block (0-based) whose output is steered; ``None``: the middle one, ``num_layers // 2``.
        update_layers: Decoder blocks that train; ``None``: ``layer - 2 .. layer`` (those that exist).
        params: Substring selecting the trained parameters of those blocks (``mlp``: the whole MLP;
            ``mlp.down_proj``: the paper's exact choice).
        steering_coef: ``c``, the norm of the target activation; it should exceed the activations' own norm at
            ``layer`` (about 17 at the middle layer of the default 128-wide model).
        seed: Seed of the random direction ``u``.
        **kwargs: ``ckpt``, the other optimizer settings (``weight_decay``, ``warmup``), the other loss weights
            (``gamma``, ``retain_loss``) and ``lora`` of :class:`~medforget.methods.lm.base.LMUnlearningMethod`.
    """

    needs_reference = True

    def __init__(
        self,
        lr: float = 5e-3,
        alpha: float = 10.0,
        layer: int | None = None,
        update_layers: list[int] | None = None,
        params: str = "mlp",
        steering_coef: float = 50.0,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, alpha=alpha, **kwargs)

    def on_attach(self) -> None:
        hp = self.hparams
        n = len(decoder_layers(self.lm))
        self.layer = n // 2 if hp.layer is None else hp.layer
        if not 0 <= self.layer < n:
            raise ValueError(f"model.layer must be in [0, {n}), got {self.layer}")
        self.update_layers = (sorted(hp.update_layers) if hp.update_layers is not None
                              else list(range(max(0, self.layer - 2), self.layer + 1)))
        if any(not 0 <= i <= self.layer for i in self.update_layers):
            raise ValueError(f"model.update_layers must be in [0, {self.layer}] (blocks after the steered layer do "
                             f"not affect it), got {self.update_layers}")
        self.lm.requires_grad_(False)
        blocks = decoder_layers(self.lm)
        for i in self.update_layers:
            for name, p in blocks[i].named_parameters():
                if hp.params in name:
                    p.requires_grad_(True)
        if not any(p.requires_grad for p in self.lm.parameters()):
            raise ValueError(f"model.params={hp.params!r} matches no parameter of blocks {self.update_layers}")
        width = self.lm.lm.config.hidden_size
        u = torch.rand(width, generator=torch.Generator().manual_seed(hp.seed))  # (D,), as the paper: uniform, then
        self.register_buffer("control", hp.steering_coef * u / u.norm())  # normalised and scaled: c u

    def unlearning_loss(self, forget: dict[str, Any], retain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = layer_activations(self.lm, forget, self.layer)  # (B, T, D)
        positions = forget["attention_mask"].clone()
        positions[:, 0] = 0  # <s>: the same activation for every text (often a massive one), nothing to forget
        forget_loss = masked_mse(h, self.control.expand_as(h), positions)
        return self.combine(forget_loss, retain)

    def retain_term(self, retain: dict[str, torch.Tensor]) -> torch.Tensor:
        h = layer_activations(self.lm, retain, self.layer)
        with torch.no_grad():
            h_ref = layer_activations(self.reference, retain, self.layer)
        return masked_mse(h, h_ref, retain["attention_mask"])
