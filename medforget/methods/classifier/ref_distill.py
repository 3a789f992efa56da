"""RefDistill: reference-model distillation. Models that never saw the forget patients teach the student on them;
the original teaches it on everything else."""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from medforget.datamodules import keys
from medforget.methods.classifier import selection
from medforget.methods.classifier._common import Frozen, TeacherStudent, distillation_kl
from medforget.methods.classifier.search_space import ChoiceKnob, FloatKnob, default_space, init_default

log = logging.getLogger("medforget")

DESIGN = "design.json"  # written by medforget.audit.classifier.reference_models next to the models it trains


class RefDistill(TeacherStudent):
    """Distil the forget patients' outputs from K *reference models* that never saw them, and everything else from
    the original (a frozen copy), so the forget patients end up looking like patients a model never trained on, while
    the retain patients keep the original's (memorised) outputs::

        p_ref(x)  = mean_k softmax(r_k(x) / T)                               the references' consensus
        L_forget  = T^2 KL(p_ref || softmax(student / T))   on forget batches
        L_retain  = T^2 KL(softmax(teacher / T) || softmax(student / T))   on retain batches (teacher: the original)
        L         = forget_weight L_forget + retain_kl_weight L_retain + retain_ce_weight CE(student, y) on retain

    each term averaged over the classifier's heads (fused, image, text; ``heads="all"``, the default) or taken on
    the fused head alone (``heads="fused"``).

    **References.** ``K = num_references`` models trained with the original model's recipe, each on a seeded
    subset of the retain patients (the balanced design of :mod:`medforget.audit.classifier.reference_models`), excluding
    *every* forget patient of the request (the part set aside for checkpoint selection too). They are taken from,
    in this order:

    1. ``reference_checkpoints``: explicit files; each must lie next to the ``design.json`` of the set it belongs to,
       whose excluded rows cover every forget row of the request (otherwise it is refused, naming the file);
    2. ``reference_dir``: a cache folder of such sets (``<dir>/<recipe>-<rows>/``); the first set with at least K
       models whose design excluded every forget row is used;
    3. otherwise the method trains its own K models at the start of the fit, into ``reference_dir`` (default
       ``<out>/reference_models`` of the unlearn run), with ``reference_epochs`` (default: the original's) and seed
       ``reference_seed``; a later request whose patients they all excluded reuses them.

    A model whose provenance says ``retrained`` (the audit's target) is refused: the references must be distinct
    from the model the audit compares with.

    **Caveat (honest).** The audit's LiRA/RMIA attacks and its per-patient test also use reference models of the same
    recipe as their null distribution ("what a never-seen patient looks like"). Distilling towards such models pushes
    the student towards the audit's null distribution by construction, so a passing per-patient test is weaker
    evidence for this method than for one that never used reference models. To keep the two from being *the same*
    models, the method's default ``reference_seed`` (1000) differs from the audit's seed (``--audit.seed``, 0), which
    changes both the retain subsets and the training seeds, and the method caches its own set under the unlearn run's
    folder unless told otherwise; do not point ``reference_dir``/``reference_checkpoints`` at the audit's cache when
    the same audit will judge the result. The cost of the references (K trainings on half the retain patients) is
    outside the unlearning time when they are cached; a benchmark should report it apart.

    Args:
        lr: Learning rate.
        reference_checkpoints: Reference-model checkpoints (see above); ``None``: ``reference_dir`` or train them.
        reference_dir: Cache folder of reference-model sets (read, and written when the method trains its own).
        num_references: K, the number of reference models (>= 2).
        reference_epochs: Training epochs of each reference model the method trains (default: the original's).
        reference_seed: Seed of the design and training of the references the method trains (keep it apart from the
            audit's ``--audit.seed``).
        temperature: Distillation temperature T of both KL terms.
        forget_weight: Weight of the forget KL to the references' mean prediction.
        retain_kl_weight: Weight of the retain KL to the original model (fidelity: keeps the retain patients'
            memorised outputs, which a retrained model also has).
        retain_ce_weight: Weight of the retain cross-entropy (0: pure distillation).
        freeze_bn_stats: Keep the student's BatchNorm statistics fixed (affine weights train).
        selection_target: What checkpoint selection (and ``medforget tune``) aims the forget patients at: ``val``:
            the original's val level, as every other method; ``references``: that level shifted by how these
            references do on the forget selection patients against val patients
            (:func:`~medforget.methods.classifier.selection.reference_targets`; a request harder than the val
            patients is then aimed lower, as a retrained model lands it). Measured on the issue-14 leaderboard (5%,
            3 seeds, same tuning budget) it did not help: mean gap 0.091 against 0.072 with ``val``, because the
            selection part (a quarter of the request) is too few patients for either target to steer by.
        heads: ``all``: every head (fused and the unimodal image / text heads) is distilled, each from the same head
            of the references (forget) and of the original (retain), the three terms averaged over the heads;
            ``fused``: the fused head only. Distilling the fused head alone leaves the unimodal encoders unanchored:
            on the demo's seed 0 the image head's test AUC fell from 0.82 to 0.63 and the fused head's by 0.06
            (``all``: by 0.01).
        **kwargs: ``ckpt`` and the other optimizer settings (``optimizer``, ``weight_decay``, ``momentum``) of
            :class:`~medforget.methods.classifier.base.UnlearningMethod`.
    """

    def __init__(
        self,
        lr: float = 1e-3,
        reference_checkpoints: list[str] | None = None,
        reference_dir: str | None = None,
        num_references: int = 4,
        reference_epochs: int | None = None,
        reference_seed: int = 1000,
        temperature: float = 1.0,
        forget_weight: float = 1.0,
        retain_kl_weight: float = 1.0,
        retain_ce_weight: float = 0.0,
        freeze_bn_stats: bool = True,
        heads: Literal["all", "fused"] = "all",
        selection_target: Literal["val", "references"] = "val",
        **kwargs: Any,
    ) -> None:
        if num_references < 2 and not reference_checkpoints:
            raise ValueError(f"num_references must be >= 2, got {num_references}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if min(forget_weight, retain_kl_weight, retain_ce_weight) < 0 or forget_weight == 0:
            raise ValueError("forget_weight must be > 0 and retain_kl_weight, retain_ce_weight >= 0; got "
                             f"{forget_weight}, {retain_kl_weight}, {retain_ce_weight}")
        if reference_epochs is not None and reference_epochs < 1:
            raise ValueError(f"reference_epochs must be >= 1, got {reference_epochs}")
        self.source_ckpt: str | None = kwargs.get("ckpt")
        super().__init__(lr=lr, **kwargs)
        self.reference_checkpoints = list(reference_checkpoints) if reference_checkpoints else None
        self.reference_dir = reference_dir
        self.num_references = int(num_references)
        self.reference_epochs, self.reference_seed = reference_epochs, int(reference_seed)
        self.temperature = float(temperature)
        self.forget_weight, self.retain_kl_weight = float(forget_weight), float(retain_kl_weight)
        self.retain_ce_weight = float(retain_ce_weight)
        self.freeze_bn_stats = freeze_bn_stats
        if heads not in ("all", "fused"):
            raise ValueError(f"heads must be 'all' or 'fused', got {heads!r}")
        self.heads = heads
        if selection_target not in ("references", "val"):
            raise ValueError(f"selection_target must be 'references' or 'val', got {selection_target!r}")
        self.selection_target = selection_target
        self.train(self.training)
        # a plain list, not submodules: the references stay out of Lightning checkpoints and of .train()
        self._references: list[Frozen] = []
        self.reference_paths: list[Path] = []

    @classmethod
    def search_space(cls, init_args: dict[str, Any]) -> dict[str, Any]:
        # its config's rate (1e-3) already suits the small from-scratch classifier: a narrower range than the default
        # x0.1..x100 (above ~5e-3 the retain distillation no longer holds the retain patients' outputs)
        lr = float(init_default(cls, "lr", init_args))
        return {**default_space(cls, init_args), "lr": FloatKnob(lr / 10, lr * 3, log=True),
                "forget_weight": FloatKnob(0.25, 4.0, log=True),
                "retain_kl_weight": FloatKnob(0.25, 4.0, log=True),
                "retain_ce_weight": FloatKnob(0.0, 1.0),
                "temperature": ChoiceKnob((1.0, 2.0, 4.0))}

    # --- the reference models ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit" or self._references:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "indices") or "forget" not in datamodule.indices:
            raise RuntimeError("RefDistill needs an unlearn-mode datamodule with a forget request "
                               "(DicomReportDataModule(mode='unlearn', forget=...))")
        forget_rows = {int(r) for part in ("forget", keys.FORGET_SELECTION)
                       for r in datamodule.indices.get(part, [])}
        self.reference_paths = self._resolve_references(datamodule, forget_rows)
        self._references = [Frozen(self._load_reference(p).net) for p in self.reference_paths]

    def on_train_start(self) -> None:
        """The base's selection reference (the original on the validation parts), then, with ``selection_target
        = "references"``, the forget targets calibrated on the references' own metrics on the same parts."""
        fresh = self.selection_reference is None
        super().on_train_start()
        if not fresh or self.selection_reference is None or self.selection_target != "references":
            return
        parts = self._validation_parts()
        if keys.FORGET_SELECTION not in parts or not self._references:
            return
        metrics = []
        for reference in self._references:
            reference.to(self.device)
            metrics.append(selection.part_metrics({part: self.part_logits(part, reference)
                                                   for part in (keys.FORGET_SELECTION, keys.VAL)}))
        self.selection_reference = {**self.selection_reference,
                                    **selection.reference_targets(self.selection_reference, metrics)}

    def _resolve_references(self, datamodule: Any, forget_rows: set[int]) -> list[Path]:
        if self.reference_checkpoints:
            paths = [Path(p) for p in self.reference_checkpoints]
            for path in paths:
                _check_design(path.parent, forget_rows, f"reference checkpoint {path}")
            return paths
        if self.reference_dir is not None and Path(self.reference_dir).is_dir():
            found = _cached_set(Path(self.reference_dir), forget_rows, self.num_references)
            if found is not None:
                log.info("RefDistill: %d reference models from %s", self.num_references, found[0].parent)
                return found
        return self._train_references(datamodule)

    def _train_references(self, datamodule: Any) -> list[Path]:
        if self.source_ckpt is None:
            raise RuntimeError("RefDistill trains its reference models with the original model's recipe: pass ckpt")
        root = Path(self.reference_dir) if self.reference_dir else Path(self.trainer.default_root_dir) / \
            "reference_models"
        accelerator = "gpu" if self.device.type == "cuda" else "cpu"
        return train_method_references(self.source_ckpt, datamodule, self.num_references, root,
                                       self.reference_epochs, self.reference_seed, accelerator)

    def _load_reference(self, path: Path) -> Any:
        from medforget.core.checkpoint import public_hparams
        from medforget.systems.classifier import load_classifier

        reference = load_classifier(path)
        provenance = getattr(reference, "provenance", {}) or {}
        if provenance.get("kind") == "retrained":
            raise ValueError(f"reference checkpoint {path} is a retrained model (the audit's target): RefDistill's "
                             "references must be models distinct from it (see reference_models / reference_dir)")
        mine, theirs = public_hparams(self.classifier.hparams), public_hparams(reference.hparams)
        differing = sorted(k for k in set(mine) | set(theirs) if k != "image_pretrained" and
                           mine.get(k) != theirs.get(k))
        if differing:
            raise ValueError(f"reference checkpoint {path} was trained with another recipe than the model being "
                             f"unlearned ({', '.join(differing)} differ); references must share its architecture "
                             "and tokenizer")
        split = self.classifier.provenance.get("split_fingerprint") if hasattr(self.classifier, "provenance") else None
        if split and provenance.get("split_fingerprint") not in (None, split):
            raise ValueError(f"reference checkpoint {path} belongs to another data split (split fingerprint "
                             f"{provenance.get('split_fingerprint')} != {split})")
        return reference

    def reference_probs(self, batch: dict, head: str = "fused") -> torch.Tensor:
        """``mean_k softmax(r_k(x) / T)`` of the reference models' ``head`` on ``batch``."""
        return self.reference_head_probs(batch, (head,))[head]

    def reference_head_probs(self, batch: dict, heads: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """``{head: mean_k softmax(r_k(x)[head] / T)}``: one forward pass of each reference model."""
        if not self._references:
            raise RuntimeError("RefDistill has no reference models yet (they are loaded at the start of fit)")
        probs: dict[str, list[torch.Tensor]] = {h: [] for h in heads}
        for reference in self._references:
            reference.to(self.device)
            logits = reference(batch)
            for h in heads:
                probs[h].append(F.softmax(logits[h].float() / self.temperature, dim=-1))
        return {h: torch.stack(p).mean(0) for h, p in probs.items()}

    # --- loss ---------------------------------------------------------------------------------------------------
    def unlearning_loss(self, forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        t = self.temperature
        student_f = self(forget)
        heads = tuple(student_f) if self.heads == "all" else ("fused",)
        targets = self.reference_head_probs(forget, heads)
        forget_kl = torch.stack([F.kl_div(F.log_softmax(student_f[h] / t, -1), targets[h], reduction="batchmean")
                                 for h in heads]).mean() * t**2
        student_r = self(retain)
        teacher_r = self.teacher(retain)
        retain_kl = torch.stack([distillation_kl(student_r[h], teacher_r[h], t) for h in heads]).mean()
        retain_ce = torch.stack([F.cross_entropy(student_r[h], retain[keys.LABEL]) for h in heads]).mean()
        total = self.forget_weight * forget_kl + self.retain_kl_weight * retain_kl + self.retain_ce_weight * retain_ce
        return {"loss": total, "forget_kl": forget_kl.detach(), "retain_kl": retain_kl.detach(),
                "retain_ce": retain_ce.detach()}


def _design(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / DESIGN).read_text())
    except (OSError, ValueError):
        return None


def _check_design(folder: Path, forget_rows: set[int], what: str) -> None:
    """Refuse a reference model whose set's design does not exclude every forget row (naming the file)."""
    design = _design(folder)
    if design is None:
        raise ValueError(f"{what}: no {DESIGN} beside it records which patients it excluded, so RefDistill cannot "
                         "check that it never saw a forget patient; use models trained by "
                         "medforget.audit.classifier.reference_models (reference_dir) or let RefDistill train its own")
    missing = forget_rows - {int(r) for r in design.get("excluded_rows", [])}
    if missing:
        raise ValueError(f"{what} trained on {len(missing)} row(s) of the forget request's patients (its "
                         f"{folder / DESIGN} did not exclude them): references must exclude every forget patient")


def _cached_set(root: Path, forget_rows: set[int], k: int) -> list[Path] | None:
    """The first cached set (by folder name) under ``root`` whose design excluded every forget row and has k models."""
    for meta in sorted(root.glob(f"*/{DESIGN}")):
        design = _design(meta.parent)
        if design is None or not forget_rows <= {int(r) for r in design.get("excluded_rows", [])}:
            continue
        paths = [meta.parent / f"model_{i}.ckpt" for i in range(k)]
        if all(p.is_file() for p in paths):
            return paths
    return None


def train_method_references(original: str | Path, datamodule: Any, k: int, root: str | Path,
                            epochs: int | None = None, seed: int = 1000, accelerator: str = "cpu") -> list[Path]:
    """Train (or reuse from ``root``) RefDistill's own K reference models for the forget request of ``datamodule``
    (unlearn mode, set up): :func:`~medforget.audit.classifier.reference_models.train_reference_models` with the
    original's recipe, excluding every forget patient, seeded with ``seed``. A benchmark calls it before the unlearning
    run to time the references apart; the method calls it when it finds none."""
    from medforget.audit.classifier.reference_models import train_reference_models

    # the datamodule's own settings (LightningCLI adds private keys such as _instantiator to its hparams)
    accepted = set(inspect.signature(type(datamodule).__init__).parameters) - {
        "self", "mode", "forget", "exclude_patients", "selection_fraction", "num_workers"}
    data_kwargs = {k_: v for k_, v in dict(datamodule.hparams).items() if k_ in accepted}
    with torch.random.fork_rng(devices=[]):  # the student's own random stream is unchanged by the references
        paths, _ = train_reference_models(original, datamodule, data_kwargs, k, Path(root), epochs=epochs, seed=seed,
                                          accelerator=accelerator)
    return list(paths)
