"""Robustness of forgetting: quantization recovery and the relearning attack.

- **Quantization recovery** (Zhang et al., ICLR 2025: "Catastrophic failure of LLM unlearning via quantization"):
  an unlearned model whose weights moved only a little from the original may fall back to the original when its
  weights are rounded. :func:`quantize_model` gives ``int8`` (torchao's dynamic int8 activation + int8 weight
  quantization of every ``Linear``, int8 per-channel round-to-nearest of every convolution) and ``int4`` (4-bit
  round-to-nearest, group-wise, of every ``Linear`` and convolution weight, with torchao's affine quantization
  primitives). :func:`recovered_fraction` is the share of the forgotten performance that comes back.
- **Relearning attack**: fine-tune a few steps on a small part of the forget set and watch how fast accuracy on the
  *other* forget patients returns, compared with the retrained model under the same attack (a model that only hid
  the patients relearns them much faster than one that never saw them).
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from typing import Any

import torch
from torch import nn

from medforget.audit.utility import classification_metrics
from medforget.datamodules import keys
from medforget.systems.classifier import FusionClassifier

QUANTIZATION_SCHEMES = ("int8", "int4")
# torchao registers an Enum with torch's pytree at import time, and torch logs a deprecation notice for it
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def round_to_nearest(weight: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """Symmetric round-to-nearest weight quantization, returned dequantized (same dtype and shape).

    Each output channel (row of ``weight`` flattened to 2-D) is split into groups of ``group_size`` input weights
    (``None``, or a size that does not divide the row: one group per channel); each group has its own scale
    ``max|w| / ((q_max - q_min) / 2)`` and integer levels ``[-2^(bits-1), 2^(bits-1) - 1]``.
    """
    from torchao.quantization.quant_primitives import (
        MappingType,
        choose_qparams_affine,
        dequantize_affine,
        quantize_affine,
    )

    if not 2 <= bits <= 8:
        raise ValueError(f"bits must lie in [2, 8], got {bits}")
    w = weight.detach().reshape(weight.shape[0], -1).float()
    cols = w.shape[1]
    block = (1, group_size if group_size and cols % group_size == 0 else cols)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale, zero = choose_qparams_affine(w, MappingType.SYMMETRIC, block, torch.int8, qmin, qmax)
    q = quantize_affine(w, block, scale, zero, torch.int8, qmin, qmax)
    out = dequantize_affine(q, block, scale, zero, torch.int8, qmin, qmax, output_dtype=torch.float32)
    return out.reshape(weight.shape).to(weight.dtype)


def _round_weights_(model: nn.Module, types: tuple[type, ...], bits: int, group_size: int | None,
                    skip: tuple[str, ...] = ()) -> int:
    count = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, types) and getattr(module, "weight", None) is not None and name not in skip:
                module.weight.copy_(round_to_nearest(module.weight, bits, group_size))
                count += 1
    return count


def quantize_model(model: nn.Module, scheme: str, group_size: int = 32, module: str = "net",
                   skip: tuple[str, ...] = ()) -> nn.Module:
    """A quantized copy of ``model`` (CPU, eval mode); the input model is not modified.

    Args:
        model: A classifier (or any module, e.g. a :class:`~medforget.systems.lm.ClinicalLM`).
        scheme: ``int8`` (dynamic int8 Linear layers + int8 per-channel convolutions) or ``int4`` (4-bit
            round-to-nearest of every Linear and convolution weight, groups of ``group_size``).
        group_size: Group size of ``int4``.
        module: The submodule whose Linear layers ``int8`` swaps for torchao's int8 kernels (``net`` of a
            classifier, ``lm`` of a language model; ``""``: the whole model).
        skip: Qualified names (as in ``model.named_modules()``) of layers left in full precision, e.g. a language
            model's ``lm.lm_head`` (tied to its input embeddings, which weight-only LLM quantizers keep in full
            precision).
    """
    if scheme not in QUANTIZATION_SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; choose from {QUANTIZATION_SCHEMES}")
    quantized = copy.deepcopy(model).cpu().eval()
    if scheme == "int8":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        _round_weights_(quantized, CONV_TYPES, bits=8, group_size=None, skip=skip)
        target = quantized.get_submodule(module)
        prefix = f"{module}." if module else ""
        keep = (lambda mod, fqn: isinstance(mod, nn.Linear) and f"{prefix}{fqn}" not in skip) if skip else None
        quantize_(target, Int8DynamicActivationInt8WeightConfig(), filter_fn=keep)
    else:
        _round_weights_(quantized, (nn.Linear, *CONV_TYPES), bits=4, group_size=group_size, skip=skip)
    return quantized


def _plain(batch: Any) -> Any:
    """MONAI MetaTensors as plain tensors (quantized kernels dispatch on tensor subclasses)."""
    if isinstance(batch, dict):
        return {k: _plain(v) for k, v in batch.items()}
    if isinstance(batch, torch.Tensor) and hasattr(batch, "as_tensor"):
        return batch.as_tensor()
    return batch


@torch.no_grad()
def predict_plain(model: FusionClassifier, loader) -> dict[str, Any]:
    """Logits of every head, labels and manifest indices, with a plain CPU loop (for quantized models)."""
    model.eval()
    logits: dict[str, list[torch.Tensor]] = {}
    labels, index = [], []
    for batch in loader:
        batch = _plain(model.prepare_batch(batch))
        for head, value in model(batch).items():
            logits.setdefault(head, []).append(value.float())
        labels.append(batch[keys.LABEL])
        index.append(batch[keys.INDEX])
    return {"logits": {h: torch.cat(v) for h, v in logits.items()}, keys.LABEL: torch.cat(labels),
            keys.INDEX: torch.cat(index)}


def recovered_fraction(original: float, unlearned: float, attacked: float, min_change: float = 0.02) -> float:
    """Share of the forgotten performance an attack brings back: ``(attacked - unlearned) / (original - unlearned)``.

    0: nothing recovered; 1: back at the original. ``nan`` when unlearning changed the metric by less than
    ``min_change`` (nothing was forgotten that could be recovered).
    """
    forgotten = original - unlearned
    if any(math.isnan(v) for v in (original, unlearned, attacked)) or abs(forgotten) < min_change:
        return float("nan")
    return (attacked - unlearned) / forgotten


def record_steps(steps: int) -> list[int]:
    """Steps at which the relearning curve is measured: 0, 1, 2, 5, 10, 20, 50, ... and ``steps``."""
    marks = {0, steps}
    for decade in itertools.count():
        for m in (1, 2, 5):
            value = m * 10**decade
            if value >= steps:
                return sorted(marks)
            marks.add(value)
    return sorted(marks)  # pragma: no cover


def relearning_attack(
    model: FusionClassifier, attack_loader, eval_loader, steps: int = 10, lr: float = 5e-4, seed: int = 0,
    final: dict[str, Any] | None = None,
) -> dict[str, list[float]]:
    """Fine-tune a copy of ``model`` on ``attack_loader`` for ``steps`` steps (AdamW, the classifier's own loss,
    BatchNorm statistics and dropout frozen: eval mode) and measure fused-head metrics on ``eval_loader`` along the
    way (:func:`record_steps`).

    Args:
        final: If given, filled with the attacked model's predictions on ``eval_loader`` after the last step
            (:func:`predict_plain`'s dict), for per-patient intervals.

    Returns:
        ``{"step": [...], "accuracy": [...], "auc": [...], "f1": [...]}``.
    """
    torch.manual_seed(seed)
    attacked = copy.deepcopy(model).cpu().eval()
    optimizer = torch.optim.AdamW(attacked.parameters(), lr=lr)
    marks = record_steps(steps)
    curve: dict[str, list[float]] = {"step": [], "accuracy": [], "auc": [], "f1": []}

    def measure(step: int) -> None:
        out = predict_plain(attacked, eval_loader)
        if final is not None:
            final.clear()
            final.update(out)
        metrics = classification_metrics(out["logits"]["fused"], out[keys.LABEL])
        curve["step"].append(step)
        for k in ("accuracy", "auc", "f1"):
            curve[k].append(metrics[k])

    measure(0)
    batches = itertools.cycle(list(attack_loader))
    for step in range(1, steps + 1):
        batch = _plain(attacked.prepare_batch(next(batches)))
        with torch.enable_grad():
            loss = attacked.loss(attacked(batch), batch[keys.LABEL])["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if step in marks:
            measure(step)
    return curve
