"""ForgettingLayers (Hatua et al., "Forgetting Neural Networks"): per-neuron multiplicative decay cycles."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from medforget.datamodules import keys
from medforget.methods.classifier.base import UnlearningMethod

Scheme = Literal["rank", "position", "top", "random"]


def forgetting_rates(activation: torch.Tensor, scheme: Scheme, tau_min: float, tau_max: float,
                     top_fraction: float = 0.3, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-neuron time constants ``tau`` (in optimizer steps; ``inf`` = never decays) from the neurons' mean
    activation on D_f.

    * ``rank``: the most D_f-activated neuron gets ``tau_min``, the least ``tau_max``, linearly by rank;
    * ``position``: the same schedule by neuron index (first neuron fastest), ignoring activations;
    * ``top``: the ``top_fraction`` most activated neurons decay with ``tau_min``, the others never;
    * ``random``: the ``rank`` schedule assigned in a random (seeded) order.
    """
    n = activation.numel()
    ladder = torch.linspace(tau_min, tau_max, n, dtype=torch.float64) if n > 1 else torch.full((1,), tau_min)
    order = torch.argsort(activation.double(), descending=True)  # most activated first
    tau = torch.empty(n, dtype=torch.float64)
    if scheme == "rank":
        tau[order] = ladder
    elif scheme == "position":
        tau = ladder.clone()
    elif scheme == "top":
        tau.fill_(math.inf)
        tau[order[: max(1, int(round(top_fraction * n)))]] = tau_min
    elif scheme == "random":
        tau[torch.randperm(n, generator=generator)] = ladder
    else:
        raise ValueError(f"unknown scheme {scheme!r}; choose rank, position, top or random")
    return tau


class ForgettingLayers(UnlearningMethod):
    """Forgetting cycles on the hidden units that feed the classification heads (the joint embedding and each
    unimodal embedding).

    Each cycle has ``unlearn_steps`` steps during which neuron ``j`` decays multiplicatively, ``e^{-t/tau_j}``
    after ``t`` steps, followed by ``relearn_steps`` steps without decay. Both phases minimise ``CE(D_r)``, so the
    network re-learns the retain task on whatever the decay left. The decay scales the neuron's outgoing weights
    (the head's input column), which is exactly a decay of the unit's output and stays in the exported model.
    ``tau`` comes from :func:`forgetting_rates` on the units' mean absolute activation over D_f.

    Args:
        scheme: Rate scheme: ``rank``, ``position``, ``top`` or ``random``.
        tau_min: Fastest time constant (steps).
        tau_max: Slowest time constant (steps).
        top_fraction: Share of units that decay in the ``top`` scheme.
        unlearn_steps: Decay steps per cycle.
        relearn_steps: Decay-free steps per cycle.
        rate_seed: Seed of the ``random`` scheme.
        **kwargs: ``ckpt`` and the optimizer settings (``lr``, ``optimizer``, ``weight_decay``, ``momentum``) of
            :class:`~medforget.methods.classifier.base.UnlearningMethod`.
    """

    def __init__(
        self,
        scheme: Scheme = "rank",
        tau_min: float = 5.0,
        tau_max: float = 50.0,
        top_fraction: float = 0.3,
        unlearn_steps: int = 10,
        relearn_steps: int = 10,
        rate_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if not 0 < tau_min <= tau_max or unlearn_steps < 1 or relearn_steps < 0:
            raise ValueError("need 0 < tau_min <= tau_max, unlearn_steps >= 1 and relearn_steps >= 0")
        if scheme not in ("rank", "position", "top", "random"):
            raise ValueError(f"unknown scheme {scheme!r}; choose rank, position, top or random")
        super().__init__(**kwargs)
        self.scheme, self.top_fraction = scheme, float(top_fraction)
        self.tau_min, self.tau_max = float(tau_min), float(tau_max)
        self.unlearn_steps, self.relearn_steps, self.rate_seed = int(unlearn_steps), int(relearn_steps), rate_seed
        self.taus: dict[str, torch.Tensor] = {}  # head name -> (in_features,) time constants

    def head_inputs(self) -> dict[str, str]:
        """Head name -> the feature (``forward_features`` key) feeding it."""
        return {"fused": "joint", **{m: m for m in self.net.modalities}}

    @torch.no_grad()
    def forget_activations(self) -> dict[str, torch.Tensor]:
        """Mean absolute activation of each head-input unit over D_f (network in eval mode)."""
        net, was_training = self.net, self.net.training
        net.eval()
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for batch in self.part_batches(keys.FORGET):
            feats = net.forward_features(batch)
            for head, feat in self.head_inputs().items():
                sums[head] = sums.get(head, 0) + feats[feat].abs().sum(0).double().cpu()
            count += len(batch[keys.LABEL])
        net.train(was_training)
        return {h: s / max(count, 1) for h, s in sums.items()}

    def on_train_start(self) -> None:
        super().on_train_start()
        if not self.taus:
            generator = torch.Generator().manual_seed(self.rate_seed)
            self.taus = {h: forgetting_rates(a, self.scheme, self.tau_min, self.tau_max, self.top_fraction, generator)
                         for h, a in self.forget_activations().items()}

    def in_unlearn_phase(self, step: int) -> bool:
        return step % (self.unlearn_steps + self.relearn_steps) < self.unlearn_steps

    def unlearning_loss(self, forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        retain_ce = self.classification_loss(retain)
        phase = torch.tensor(float(self.in_unlearn_phase(self.global_step)))
        return {"loss": retain_ce, "retain_ce": retain_ce.detach(), "decaying": phase}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        step = self.global_step  # before Lightning increments it for this step
        super().optimizer_step(*args, **kwargs)
        if self.taus and self.in_unlearn_phase(step):
            self.decay()

    @torch.no_grad()
    def decay(self) -> None:
        """One step of decay: the outgoing weights of unit ``j`` times ``e^{-1/tau_j}``."""
        for head, tau in self.taus.items():
            weight = self.net.heads[head].weight  # (num_classes, in_features)
            weight.mul_(torch.exp(-1.0 / tau).to(weight.device, weight.dtype))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["forgetting_layers_taus"] = self.taus

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.taus = checkpoint.get("forgetting_layers_taus") or {}
