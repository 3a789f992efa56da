"""Reference (shadow) models for the offline LiRA and RMIA attacks.

``K`` models are trained with the original model's recipe (architecture, hyper-parameters, epochs) on subsets of the
retain patients, in a balanced design: every retain patient is in the training data of exactly ``K // 2`` models.
No reference model ever sees a forget, val or test patient, so for those samples all ``K`` models are OUT (what the
offline attacks need), and every retain sample has at least one OUT model.

Models are cached under ``<dir>/<recipe>-<rows>/model_<k>.ckpt`` with a ``design.json`` (split, K, seed, epochs,
hyper-parameters and the manifest rows they excluded). A later audit reuses a cached set when its recipe matches and
it excluded every patient of the new request: repeated audits of one request, several unlearned models, and any
request contained in an earlier one (the patients excluded then but retained now are OUT for every model, which the
offline attacks handle). No patient identifier is written (rows, not IDs).
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

from medforget.core.checkpoint import public_hparams
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.systems.classifier import FusionClassifier, export_classifier, load_classifier

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


#: Data options that do not change how a reference model trains: the manifest's *path* (its content hash is in the
#: recipe, so a moved or symlinked run folder reuses its cache), workers, and the unlearn/audit-only options.
NOT_RECIPE = ("manifest", "num_workers", "forget", "selection_fraction", "mode", "bounded", "retain_per_epoch",
              "retain_per_forget", "retain_pool", "max_eval_patients", "unlearn_epoch")


def _fingerprint(**facts: Any) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _in_sets(df, excluded_rows: list[int], train_rows: np.ndarray, k: int, seed: int) -> list[set[str]]:
    """The IN patients of each model of a design that excluded ``excluded_rows``: the balanced design over the
    sorted training patients that were not excluded."""
    excluded = set(df.loc[excluded_rows, "patient_id"]) if excluded_rows else set()
    patients = sorted(set(df.loc[train_rows, "patient_id"]) - excluded)
    design = balanced_design(len(patients), k, seed)
    return [{p for p, is_in in zip(patients, design[i], strict=True) if is_in} for i in range(k)]


def _cached(root: Path, recipe: str, forget_rows: set[int], k: int) -> tuple[Path, list[int]] | None:
    """A cached set of the recipe that excluded every forget row (the fewest exclusions first)."""
    found = []
    for meta in root.glob(f"{recipe}-*/{DESIGN}"):
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        excluded = [int(r) for r in info.get("excluded_rows", [])]
        paths = [meta.parent / f"model_{i}.ckpt" for i in range(k)]
        if info.get("recipe") == recipe and forget_rows <= set(excluded) and all(p.exists() for p in paths):
            found.append((len(excluded), meta.parent, excluded))
    if not found:
        return None
    _, folder, excluded = min(found, key=lambda f: (f[0], str(f[1])))
    return folder, excluded


def train_reference_models(
    original: str | Path,
    datamodule: DicomReportDataModule,
    data_kwargs: dict[str, Any],
    k: int,
    out_dir: str | Path,
    epochs: int | None = None,
    seed: int = 0,
    accelerator: str = "auto",
) -> tuple[list[Path], list[set[str]]]:
    """Train (or reuse) ``k`` reference models.

    Args:
        original: The original model's checkpoint (its hyper-parameters and epochs are the recipe).
        datamodule: The audit's datamodule (``evaluate`` mode, with the forget request), already set up.
        data_kwargs: Data options to build the training datamodules with (manifest, image size, batch size, ...).
        k: Number of reference models (>= 2).
        out_dir: The cache (shared by requests: see the module docstring).
        epochs: Training epochs (default: the original model's).
        seed: Seed of the design and of training (model ``i`` uses ``seed + i``).
        accelerator: Lightning accelerator.

    Returns:
        The checkpoint paths and, per model, the set of patient IDs it trained on (in memory only, never written).
    """
    source = load_classifier(original)
    hparams = public_hparams(source.hparams)
    epochs = int(epochs or source.provenance.get("epochs") or 25)
    trained_with = source.provenance.get("data", {})
    recipe_data = {key: trained_with[key] for key in ("batch_size",) if trained_with.get(key) is not None}
    if recipe_data and any(data_kwargs.get(key) != v for key, v in recipe_data.items()):
        log.warning("reference models use the original model's %s, not the audit's data options", recipe_data)
    data_kwargs = {**data_kwargs, **recipe_data}
    df = datamodule.df
    # every forget row, also those of the patients set aside for checkpoint selection (none may be IN)
    forget_rows = sorted({int(r) for part in ("forget", "forget_selection") for r in datamodule.indices.get(part, [])})
    # every retain row, also those outside the audit's bounded sample: reference models are trained like retrains
    retain_rows = getattr(datamodule, "population", {}).get("retain", datamodule.indices["retain"])
    train_rows = np.union1d(retain_rows, forget_rows).astype(int)
    recipe = _fingerprint(split=datamodule.split_fingerprint, manifest=datamodule.dataset_hash(), k=k, seed=seed,
                          epochs=epochs, hparams=hparams,
                          data={key: v for key, v in data_kwargs.items() if key not in NOT_RECIPE})
    root = Path(out_dir)
    hit = _cached(root, recipe, set(forget_rows), k) if root.exists() else None
    if hit is not None:
        folder, excluded = hit
        log.info("reusing %d reference models from %s", k, folder)
        return [folder / f"model_{i}.ckpt" for i in range(k)], _in_sets(df, excluded, train_rows, k, seed)
    in_sets = _in_sets(df, forget_rows, train_rows, k, seed)
    folder = root / f"{recipe}-{_fingerprint(rows=forget_rows)[:8]}"
    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / DESIGN
    meta.unlink(missing_ok=True)
    paths = [folder / f"model_{i}.ckpt" for i in range(k)]
    all_patients = set(df.loc[train_rows, "patient_id"])
    models = []
    for i in range(k):
        excluded = sorted(all_patients - in_sets[i])
        L.seed_everything(seed + i, workers=True, verbose=False)
        dm = DicomReportDataModule(**{**data_kwargs, "mode": "train", "forget": None, "exclude_patients": excluded})
        model = FusionClassifier(**hparams)
        trainer = L.Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, logger=False,
                            enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                            limit_val_batches=0, default_root_dir=str(folder))
        start = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        seconds = time.perf_counter() - start
        export_classifier(model, paths[i], overwrite=True, provenance={
            "kind": "reference", "index": i, "in_patients": len(in_sets[i]), "epochs": epochs,
            "fit_seconds": seconds, "split_fingerprint": source.provenance.get("split_fingerprint"),
        })
        models.append({"path": paths[i].name, "in_patients": len(in_sets[i]), "fit_seconds": seconds})
        print(f"reference model {i + 1}/{k}: {len(in_sets[i])} training patients, {epochs} epochs, {seconds:.1f} s",
              flush=True)
    tmp = meta.with_suffix(".tmp")
    tmp.write_text(json.dumps({"recipe": recipe, "k": k, "seed": seed, "epochs": epochs, "excluded_rows": forget_rows,
                               "models": models}, indent=2))
    tmp.replace(meta)
    return paths, in_sets
