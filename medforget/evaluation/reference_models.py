"""Reference (shadow) models for the offline LiRA and RMIA attacks.

``K`` models are trained with the original model's recipe (architecture, hyper-parameters, epochs) on subsets of the
retain patients, in a balanced design: every retain patient is in the training data of exactly ``K // 2`` models.
No reference model ever sees a forget, val or test patient, so for those samples all ``K`` models are OUT (what the
offline attacks need), and every retain sample has at least one OUT model.

Models are cached in ``<dir>/model_<k>.ckpt`` with a ``design.json`` fingerprint (split, forget rows, K, seed,
epochs, hyper-parameters); a later audit with the same inputs reuses them. No patient identifier is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from medforget.checkpoint import _public_hparams, export_classifier, load_classifier
from medforget.classifier import FusionClassifier
from medforget.datamodules.dicom_report import DicomReportDataModule

log = logging.getLogger("medforget")
DESIGN = "design.json"


def balanced_design(num_patients: int, k: int, seed: int = 0) -> np.ndarray:
    """``(k, num_patients)`` boolean IN matrix: each patient IN for exactly ``k // 2`` of the ``k`` models, so every
    patient is OUT for at least ``k - k // 2 >= 1`` models, and every model gets about ``num_patients * (k // 2) / k``
    patients (patients in random order each join the ``k // 2`` models with the fewest patients so far, ties broken
    at random; seeded)."""
    if k < 2:
        raise ValueError(f"reference models: K must be >= 2 (each retain patient needs an OUT model), got {k}")
    rng = np.random.default_rng(seed)
    design = np.zeros((k, num_patients), dtype=bool)
    sizes = np.zeros(k)
    for p in rng.permutation(num_patients):
        order = np.lexsort((rng.random(k), sizes))  # fewest patients first, random among equals
        chosen = order[: k // 2]
        design[chosen, p] = True
        sizes[chosen] += 1
    return design


def _fingerprint(**facts: Any) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_reference_models(
    original: str | Path,
    datamodule: DicomReportDataModule,
    data_kwargs: dict[str, Any],
    k: int,
    out_dir: str | Path,
    epochs: int | None = None,
    seed: int = 0,
    accelerator: str = "auto",
) -> tuple[list[Path], np.ndarray, list[str]]:
    """Train (or reuse) ``k`` reference models.

    Args:
        original: The original model's checkpoint (its hyper-parameters and epochs are the recipe).
        datamodule: The audit's datamodule (``evaluate`` mode, with the forget request), already set up.
        data_kwargs: Data options to build the training datamodules with (manifest, image size, batch size, ...).
        k: Number of reference models (>= 2).
        out_dir: Where the models are cached.
        epochs: Training epochs (default: the original model's).
        seed: Seed of the design and of training (model ``i`` uses ``seed + i``).
        accelerator: Lightning accelerator.

    Returns:
        The checkpoint paths, the ``(k, P)`` IN design and the ``P`` retain patient IDs it refers to (in memory
        only, never written).
    """
    source = load_classifier(original)
    hparams = _public_hparams(source.hparams)
    epochs = int(epochs or source.provenance.get("epochs") or 25)
    trained_with = source.provenance.get("data", {})
    recipe = {k: trained_with[k] for k in ("batch_size",) if trained_with.get(k) is not None}
    if recipe and any(data_kwargs.get(k) != v for k, v in recipe.items()):
        log.warning("reference models use the original model's %s, not the audit's data options", recipe)
    data_kwargs = {**data_kwargs, **recipe}
    df = datamodule.df
    retain_patients = sorted(set(df.loc[datamodule.indices["retain"], "patient_id"]))
    forget_patients = sorted(set(df.loc[datamodule.indices["forget"], "patient_id"]))
    design = balanced_design(len(retain_patients), k, seed)
    out_dir = Path(out_dir)
    fingerprint = _fingerprint(split=datamodule.split_fingerprint, manifest=datamodule.dataset_hash(),
                               forget_rows=sorted(int(r) for r in datamodule.indices["forget"]), k=k, seed=seed,
                               epochs=epochs, hparams=hparams,
                               data={key: v for key, v in data_kwargs.items() if key not in ("num_workers",)})
    paths = [out_dir / f"model_{i}.ckpt" for i in range(k)]
    meta = out_dir / DESIGN
    if meta.exists() and all(p.exists() for p in paths):
        if json.loads(meta.read_text()).get("fingerprint") == fingerprint:
            log.info("reusing %d reference models from %s", k, out_dir)
            return paths, design, retain_patients
    out_dir.mkdir(parents=True, exist_ok=True)
    meta.unlink(missing_ok=True)
    models = []
    for i in range(k):
        excluded = forget_patients + [p for p, is_in in zip(retain_patients, design[i], strict=True) if not is_in]
        L.seed_everything(seed + i, workers=True, verbose=False)
        dm = DicomReportDataModule(**{**data_kwargs, "mode": "train", "forget": None, "exclude_patients": excluded})
        model = FusionClassifier(**hparams)
        trainer = L.Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, logger=False,
                            enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                            limit_val_batches=0, default_root_dir=str(out_dir))
        start = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        seconds = time.perf_counter() - start
        export_classifier(model, paths[i], overwrite=True, provenance={
            "kind": "reference", "index": i, "in_patients": int(design[i].sum()), "epochs": epochs,
            "fit_seconds": seconds, "split_fingerprint": source.provenance.get("split_fingerprint"),
        })
        models.append({"path": paths[i].name, "in_patients": int(design[i].sum()), "fit_seconds": seconds})
        print(f"reference model {i + 1}/{k}: {int(design[i].sum())} retain patients, {epochs} epochs, "
              f"{seconds:.1f} s", flush=True)
    tmp = meta.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "k": k, "seed": seed, "epochs": epochs, "models": models},
                              indent=2))
    tmp.replace(meta)
    return paths, design, retain_patients
