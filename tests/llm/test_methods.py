"""Every registered language-model unlearning method on the tiny model (registry-parametrized), the unlearn-lm CLI,
the loss functions against hand computations, and the method-specific guarantees (GRIN's noise, SURE's hard mask,
RMU's direction and trainable layers)."""

from __future__ import annotations

import hashlib
import inspect
import math
import typing

import lightning as L
import pytest
import torch

import medforget.methods.lm  # noqa: F401  (registers the methods)
from medforget.methods.base import init_parameters
from medforget.methods.lm._losses import dpo_loss, npo_loss, simnpo_loss
from medforget.methods.lm._saliency import top_fraction_mask
from medforget.methods.lm.base import LMUnlearningMethod
from medforget.methods.lm.flat import DIVERGENCES, flat_loss
from medforget.methods.lm.grin import GRIN
from medforget.methods.lm.rmu import RMU
from medforget.methods.lm.sure import SURE
from medforget.systems.lm import load_lm
from tests.llm.conftest import TINY_LM_DATA, tiny_lm_datamodule

BASE_ARGS = set(inspect.signature(LMUnlearningMethod.__init__).parameters)


def own_literal_args(cls: type[LMUnlearningMethod]) -> dict[str, tuple]:
    """The method's own ``Literal`` arguments and their options (FLAT's divergences, GRIN's and SURE's ``then``)."""
    hints = typing.get_type_hints(cls.__init__)
    return {name: typing.get_args(hint) for name, hint in hints.items()
            if name not in BASE_ARGS and typing.get_origin(hint) is typing.Literal}


def variants():
    """Each registered method with its defaults, plus one variant per other option of its own Literal arguments."""
    for name, cls in sorted(LMUnlearningMethod.registry.items()):
        yield pytest.param(name, {}, id=name)
        defaults = inspect.signature(cls.__init__).parameters
        for arg, options in own_literal_args(cls).items():
            for option in options:
                if option != defaults[arg].default:
                    yield pytest.param(name, {arg: option}, id=f"{name}-{arg}={option}")


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def weights(method: LMUnlearningMethod) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in method.lm.named_parameters()}


class Record(L.Callback):
    """Training losses of every step, and the weights when training starts (after ``prepare``)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.start: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = weights(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def fit(method: LMUnlearningMethod, max_steps: int = 3, ckpt_path=None, **trainer_kwargs) -> Record:
    record = Record()
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[record], **trainer_kwargs)
    trainer.fit(method, datamodule=tiny_lm_datamodule(mode="unlearn", batch_size=8), ckpt_path=ckpt_path)
    method.fitted_trainer = trainer
    return record


# --- every method ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "kwargs"), list(variants()))
def test_method_unlearns_without_touching_the_checkpoint(name, kwargs, tiny_lm_ckpt):
    digest = sha256(tiny_lm_ckpt)
    method = LMUnlearningMethod.registry[name](ckpt=str(tiny_lm_ckpt), **kwargs)
    before = weights(method)
    record = fit(method)
    assert len(record.losses) == 3 and all(math.isfinite(v) for v in record.losses), record.losses
    after = weights(method)
    assert any(not torch.equal(before[n], after[n]) for n in before), f"{name} changed no weight"
    assert sha256(tiny_lm_ckpt) == digest


@pytest.mark.parametrize("name", sorted(LMUnlearningMethod.registry))
def test_every_argument_is_a_typed_flag_and_a_saved_hyperparameter(name):
    cls = LMUnlearningMethod.registry[name]
    params = list(init_parameters(cls).values())  # its own and its base's (forwarded through **kwargs)
    assert BASE_ARGS - {"self"} <= {p.name for p in params}
    hints = {}  # the type hints of every __init__ the arguments come from
    for klass in cls.__mro__:
        if issubclass(klass, LMUnlearningMethod) and "__init__" in vars(klass):
            hints = {**typing.get_type_hints(vars(klass)["__init__"]), **hints}
    assert all(p.name in hints and p.default is not inspect.Parameter.empty for p in params)
    method = cls()  # no ckpt: nothing loaded
    assert {p.name for p in params} <= set(method.hparams)
    assert all(f"{p.name}:" in (cls.__doc__ or "") for p in params if p.name not in BASE_ARGS)


@pytest.mark.parametrize("name", ["NPO", "RMU"])
def test_unlearn_lm_cli_exports_the_unlearned_model(name, tiny_lm_ckpt, tmp_path):
    from medforget.commands import unlearn_lm

    digest = sha256(tiny_lm_ckpt)
    target = unlearn_lm(["--method", name, f"--ckpt={tiny_lm_ckpt}", f"--out={tmp_path / name}", *TINY_LM_DATA,
                         "--data.batch_size=8", "--trainer.max_epochs=1", "--trainer.accelerator=cpu",
                         "--trainer.enable_progress_bar=false"])
    model = load_lm(target)
    assert model.provenance["method"] == name and model.provenance["kind"] == "unlearned"
    every = set(init_parameters(LMUnlearningMethod.registry[name]))  # its own and its base's (through **kwargs)
    assert BASE_ARGS - {"self"} <= every <= set(model.provenance["method_hparams"])
    original = load_lm(tiny_lm_ckpt)
    assert any(not torch.equal(a, b) for a, b in zip(original.state_dict().values(), model.state_dict().values(),
                                                     strict=True))
    assert sha256(tiny_lm_ckpt) == digest


# --- losses against hand computations -------------------------------------------------------------------------------
def logsig(x: float) -> float:
    return math.log(1.0 / (1.0 + math.exp(-x)))


def test_npo_loss_matches_hand_computation():
    logp, ref = torch.tensor([-2.0, -5.0]), torch.tensor([-1.0, -4.5])
    beta = 0.1
    expected = (-(2 / beta) * logsig(-beta * (-2.0 + 1.0)) - (2 / beta) * logsig(-beta * (-5.0 + 4.5))) / 2
    assert npo_loss(logp, ref, beta).item() == pytest.approx(expected, rel=1e-6)
    assert npo_loss(ref, ref, beta).item() == pytest.approx(2 / beta * math.log(2), rel=1e-6)  # at the start


def test_simnpo_loss_matches_hand_computation():
    logp, length = torch.tensor([-6.0, -2.0]), torch.tensor([3, 4])
    beta, delta = 4.5, 0.5
    expected = sum(-(2 / beta) * logsig(-(beta / n) * lp - delta) for lp, n in [(-6.0, 3), (-2.0, 4)]) / 2
    assert simnpo_loss(logp, length, beta, delta).item() == pytest.approx(expected, rel=1e-6)


def test_dpo_loss_matches_hand_computation():
    win, win_ref, lose, lose_ref = (torch.tensor(v) for v in ([-3.0, -8.0], [-4.0, -8.5], [-1.0, -2.0],
                                                               [-1.5, -1.0]))
    beta = 0.1
    rows = [(-3.0, -4.0, -1.0, -1.5), (-8.0, -8.5, -2.0, -1.0)]
    expected = sum(-logsig(beta * ((w - wr) - (lo - lr))) for w, wr, lo, lr in rows) / 2
    assert dpo_loss(win, win_ref, lose, lose_ref, beta).item() == pytest.approx(expected, rel=1e-6)


FLAT_BY_HAND = {  # -(mean g(p_good) - mean f*(g(p_bad))) written out per divergence
    "kl": lambda g, b: -(g - math.exp(b - 1)),
    "js": lambda g, b: -((math.log(2) - math.log(1 + math.exp(-g))) - (b + math.log(1 + math.exp(-b)) - math.log(2))),
    "pearson": lambda g, b: -(g - (b * b / 4 + b)),
    "tv": lambda g, b: -(math.tanh(g) / 2 - math.tanh(b) / 2),
}


@pytest.mark.parametrize("divergence", sorted(DIVERGENCES))
def test_flat_loss_matches_hand_computation(divergence):
    assert set(FLAT_BY_HAND) == set(DIVERGENCES)
    good, bad = [0.2, 0.6], [0.9, 0.5]
    expected = sum(FLAT_BY_HAND[divergence](g, b) for g, b in zip(good, bad, strict=True)) / 2
    p_good = torch.tensor(good, dtype=torch.float64, requires_grad=True)
    p_bad = torch.tensor(bad, dtype=torch.float64, requires_grad=True)
    loss = flat_loss(p_good, p_bad, divergence)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    loss.backward()  # minimising raises the refusal's probability and lowers the forget answer's
    assert (p_good.grad < 0).all() and (p_bad.grad > 0).all()


def test_top_fraction_mask_selects_the_global_top():
    scores = {"a": torch.tensor([[0.1, 5.0], [3.0, 0.2]]), "b": torch.tensor([4.0, 0.3, 0.0, 2.0])}
    masks = top_fraction_mask(scores, 0.5)  # 4 of 8
    assert masks["a"].tolist() == [[False, True], [True, False]] and masks["b"].tolist() == [True, False, False, True]
    assert sum(int(m.sum()) for m in top_fraction_mask(scores, 0.01).values()) == 1


# --- method-specific guarantees -------------------------------------------------------------------------------------
class ScoresAtStart(Record):
    def on_fit_start(self, trainer, pl_module) -> None:  # callbacks run before the module's on_fit_start (prepare)
        self.scores = pl_module.scores()


def test_grin_noises_exactly_the_top_scored_weights_once(tiny_lm_ckpt, tmp_path):
    method = GRIN(ckpt=str(tiny_lm_ckpt), fraction=0.05, mask_updates=True, lr=1e-3, weight_decay=0.1)
    original = weights(method)
    record = ScoresAtStart()
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[record])
    trainer.fit(method, datamodule=tiny_lm_datamodule(mode="unlearn", batch_size=8))
    selection = method.selection
    total = sum(m.numel() for m in selection.values())
    assert sum(int(m.sum()) for m in selection.values()) == round(0.05 * total)
    chosen = torch.cat([record.scores[n][m] for n, m in selection.items()])
    rest = torch.cat([record.scores[n][~m] for n, m in selection.items()])
    assert chosen.min() >= rest.max()
    for name, w in record.start.items():  # right after the noise step
        changed = w != original[name]
        expected = selection.get(name, torch.zeros_like(changed))
        assert torch.equal(changed, expected), name
    for name, w in weights(method).items():  # after AdamW steps with weight decay: the rest never moved
        keep = ~selection.get(name, torch.zeros_like(w, dtype=torch.bool))
        assert torch.equal(w[keep], original[name][keep]), name
    saved = tmp_path / "grin.ckpt"
    trainer.save_checkpoint(saved)
    end_of_first_run = weights(method)

    resumed = GRIN(ckpt=str(tiny_lm_ckpt), fraction=0.05, mask_updates=True, lr=1e-3, weight_decay=0.1)
    record = fit(resumed, max_steps=3, ckpt_path=str(saved))
    assert resumed.prepared and resumed.selection == {}  # prepare() did not run again: no second noise
    assert all(torch.equal(record.start[n], w) for n, w in end_of_first_run.items())
    assert all(torch.equal(resumed.update_masks[n].cpu(), m) for n, m in selection.items())
    assert len(record.losses) == 1


def test_sure_masked_rows_never_change(tiny_lm_ckpt):
    method = SURE(ckpt=str(tiny_lm_ckpt), lr=1e-2, weight_decay=0.5, fraction=0.1)
    original = weights(method)
    fit(method, max_steps=4)
    masks = method.update_masks
    rows = sum(m.shape[0] for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.1 * rows)
    moved = 0
    for name, w in weights(method).items():
        mask = masks.get(name)
        if mask is None:  # not a linear layer's weight: frozen
            assert torch.equal(w, original[name]), name
            continue
        keep = ~mask.expand_as(w)
        assert torch.equal(w[keep], original[name][keep]), name
        moved += int((w[~keep] != original[name][~keep]).sum())
    assert moved > 0


def test_rmu_direction_is_seeded_and_only_the_chosen_layers_train(tiny_lm_ckpt):
    a, b = RMU(ckpt=str(tiny_lm_ckpt), seed=1), RMU(ckpt=str(tiny_lm_ckpt), seed=1)
    assert torch.equal(a.control, b.control) and "control" in a.state_dict()
    assert not torch.equal(a.control, RMU(ckpt=str(tiny_lm_ckpt), seed=2).control)
    assert a.control.norm().item() == pytest.approx(a.hparams.steering_coef, rel=1e-5)
    assert a.layer == 1 and a.update_layers == [0, 1]  # the 2-layer tiny model: its middle block, and those before
    names = {id(p): n for n, p in a.lm.named_parameters()}
    assert {names[id(p)] for p in a.trainable_parameters()} == {
        f"lm.model.layers.{i}.mlp.{proj}.weight" for i in (0, 1) for proj in ("gate_proj", "up_proj", "down_proj")}
    c = RMU(ckpt=str(tiny_lm_ckpt), layer=1, update_layers=[1], params="mlp.down_proj")
    assert [names_ for names_, p in c.lm.named_parameters() if p.requires_grad] == [
        "lm.model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(ValueError, match="update_layers"):
        RMU(ckpt=str(tiny_lm_ckpt), layer=0, update_layers=[1])
