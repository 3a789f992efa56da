"""One base for the unlearning methods of both tasks (a classifier method and a language-model method are both an
:class:`UnlearningBase`), following torchgeo's ``BaseTask``: the task bases
(:class:`~medforget.methods.classifier.base.UnlearningMethod`, :class:`~medforget.methods.lm.base.LMUnlearningMethod`)
supply the model, the batches and the losses; this class owns what every method shares:

- **registration**: a subclass is registered by its class name in its task's registry
  (:class:`~medforget.core.registry.Registry`: ``--method NAME``, did-you-mean errors); a task base, which declares
  the registry, and a shared base declared with ``register=False`` are not choices;
- **prepare once**: :meth:`prepare` (set-up that needs data: saliency, scores, masks, noise) runs at the start of the
  first fit with gradients enabled, and not again when a run resumes from a Lightning checkpoint;
- **update masks**: with ``restricts_updates``, only the True entries of :attr:`update_masks` ever change (gradients
  zeroed outside them and decoupled weight decay applied here, to the updatable entries only);
- **the optimizer's parameters**: the trainable parameters of the model being unlearned (:meth:`unlearned_module`);
- **checkpoint hooks**: ``prepared`` and the masks are saved in Lightning checkpoints under :attr:`checkpoint_key`,
  so a resumed run continues exactly;
- **arguments**: the rule every method's ``__init__`` follows (see :class:`UnlearningBase`), and
  :func:`init_parameters`, the arguments a method takes once its bases' are included.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import lightning as L
import torch

from medforget.core.registry import Registry


class UnlearningBase(L.LightningModule):
    """The shared LightningModule of every unlearning method (see the module docstring).

    **A method declares only its own arguments.** Its typed, documented ``__init__`` is its config schema
    (LightningCLI lists it under ``model.init_args``). It takes its own arguments and forwards its base's through
    ``**kwargs`` with ``super().__init__(**kwargs)``: jsonargparse follows that call (by reading the source) and lists
    the base's arguments after the method's own, and ``save_hyperparameters`` records both. Its docstring's ``Args:``
    lists its own arguments and ends with a ``**kwargs:`` line naming the base arguments it forwards.

    - A method whose default for a base argument differs from the base's (SCRUB's ``lr=5e-4``, the classifier base's
      is ``1e-4``) declares that argument with its own default, documents it, and forwards it by keyword
      (``super().__init__(lr=lr, **kwargs)``). A base argument is never re-declared with the base's default.
    - A method that takes no optimizer settings (the training-free SSD and FisherForgetting, and SISA, which
      retrains) narrows its base's arguments instead: its ``__init__`` declares ``ckpt`` next to its own arguments,
      has no ``**kwargs`` and passes ``ckpt`` alone, so ``--print_config`` offers no learning rate that would be
      ignored (and a Lightning checkpoint, whose hyperparameters also hold the base's defaults when the method was
      built in Python, rebuilds it with the arguments it takes).

    :func:`init_parameters` gives the resulting arguments of a method; ``tests/methods/test_arguments.py`` checks the
    rule and that ``--print_config`` and the saved hyperparameters still hold every argument.
    """

    registry: ClassVar[Registry[Any]]  # declared by each task base
    restricts_updates: ClassVar[bool] = False  # True: only the True entries of ``update_masks`` ever change
    checkpoint_key: ClassVar[str] = "medforget_unlearning"  # where prepare's state goes in Lightning checkpoints

    def __init_subclass__(cls, register: bool = True, **kwargs: Any) -> None:
        """Register the subclass by its name in its task's registry, unless it declares a registry itself (a task
        base) or says ``register=False`` in its class statement (a shared base, not a choice)."""
        super().__init_subclass__(**kwargs)
        if register and "registry" not in cls.__dict__:
            cls.registry.register_class(cls)

    def __init__(self) -> None:
        super().__init__()
        self.prepared = False  # prepare() has run (saved in Lightning checkpoints: a resumed run skips it)
        self.update_masks: dict[str, torch.Tensor] = {}  # parameter name -> bool mask (True: may change)

    def unlearned_module(self) -> torch.nn.Module:
        """The ``nn.Module`` whose weights the method changes (its named parameters are the masks' keys)."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Hook for set-up that needs data: scores, masks, noise. Runs once, at the start of the first fit, with
        gradients enabled; a run resumed from a Lightning checkpoint does not run it again."""

    def on_fit_start(self) -> None:
        if not self.prepared:
            with torch.enable_grad():
                self.prepare()
            self.unlearned_module().zero_grad(set_to_none=True)
            self.prepared = True
        self.update_masks = {n: m.to(self.device, torch.bool) for n, m in self.update_masks.items()}

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.unlearned_module().parameters() if p.requires_grad]

    def apply_update_masks(self, optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
        """Zero the gradients outside :attr:`update_masks` (Adam's moments of those entries stay exactly 0, so their
        updates are exactly 0) and apply decoupled weight decay here, to the updatable entries only (the optimizer
        itself must have none), so masked-out weights never change, bit for bit."""
        lrs = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        with torch.no_grad():
            for name, p in self.unlearned_module().named_parameters():
                if id(p) not in lrs or p.grad is None:  # AdamW skips parameters without a gradient, decay included
                    continue
                mask = self.update_masks.get(name)
                if mask is not None:
                    p.grad.mul_(mask)
                if weight_decay:
                    factor = lrs[id(p)] * weight_decay
                    p.sub_(p * factor if mask is None else p * mask * factor)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[self.checkpoint_key] = {"prepared": self.prepared,
                                           "update_masks": {n: m.cpu() for n, m in self.update_masks.items()}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(self.checkpoint_key, {})
        self.prepared = bool(state.get("prepared", False))
        self.update_masks = dict(state.get("update_masks", {}))


def init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The arguments a method takes, by name, in the order LightningCLI lists them: those of ``cls.__init__``, then
    those of each base ``__init__`` it forwards ``**kwargs`` to (along the MRO, until an ``__init__`` without
    ``**kwargs``); a name a subclass declares keeps the subclass's default. ``self``, ``*args`` and ``**kwargs``
    themselves are left out."""
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        forwards = False
        for p in inspect.signature(vars(klass)["__init__"]).parameters.values():
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                forwards = True
            elif p.kind is not inspect.Parameter.VAR_POSITIONAL and p.name != "self":
                params.setdefault(p.name, p)
        if not forwards:
            break
    return params
