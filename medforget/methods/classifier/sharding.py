"""SISA exact unlearning (Bourtoule et al., "Machine Unlearning", IEEE S&P 2021) for the fusion classifier.

``train --shards K [--slices S]`` splits the training *patients* into ``K`` disjoint shards and each shard's patients
into ``S`` slices, trains one :class:`~medforget.systems.classifier.FusionClassifier` per shard incrementally (stage
``i`` continues from the checkpoint of stage ``i - 1`` and trains on slices ``0..i``), keeps every stage's checkpoint
(``<out>/shards/shard_<k>/slice_<i>.ckpt`` with SHA-256 sidecars) and exports the ensemble of the shards' last stages
(:class:`~medforget.systems.classifier.FusionEnsemble`, mean of their softmax probabilities) as ``<out>/model.ckpt``.

``unlearn --method SISA --ckpt <ensemble> --forget FILE`` retrains only the shards that hold a forget patient, from
the checkpoint of the last stage before the first slice holding one (from scratch, with the same seed, when that is
slice 0), writes the new stage checkpoints under its own ``--out`` (the input's are never touched) and exports a new
ensemble whose provenance lists the retrained shards and slices.

**Why the result equals retraining without the patients, bit for bit** (same seed, same hardware, deterministic
kernels; tested on the CPU):

- *Layout.* A patient's shard and slice depend only on its ID and the seed: ``h = sha256("medforget-sisa/<seed>/<id>")``
  read as an integer, ``shard = h mod K``, ``slice = (h div K) mod S``. Removing patients moves no other patient,
  so ``train --shards K --slices S --data.exclude_patients FILE`` builds the same shards minus those patients. (Shard
  sizes are therefore binomial rather than equal; an empty first slice is refused.)
- *Data of a stage.* The manifest rows of the shard's slices ``0..i`` (removed patients left out), in manifest order,
  shuffled by a generator seeded with the stage's seed. A stage before the first affected slice sees exactly the
  same rows in both runs; a stage from it on sees the same reduced rows in both runs.
- *Seeds.* Every stage starts with ``seed_everything(stage_seed)``, ``stage_seed = f(seed, shard, slice)`` (a hash),
  and a shard's initial weights come from ``f(seed, shard, "init")``: no stage depends on another shard, on the
  order in which shards are trained, or on what ran before it in the process.
- *Continuation.* Every stage after the first starts from its predecessor's checkpoint *file* (in training too),
  with a fresh optimizer and one-cycle schedule over the stage's steps, so continuing from a stored checkpoint is
  the same computation as continuing in memory.
- *Devices.* Shards and stages are trained one after another, each on one device (``--trainer.accelerator``;
  ``--trainer.devices``/DDP settings are not used), with ``deterministic=True`` unless ``--trainer.deterministic``
  says otherwise; ``trainer.max_epochs`` is the number of epochs of every stage.
- *Tokenizer.* A member's WordPiece tokenizer is fitted on its shard's slice-0 reports only (a pretrained encoder's
  tokenizer is used as is), so no stage depends on patients of a later slice or another shard.

Removed patients are recorded in the ensemble's provenance as salted SHA-256 digests (never as IDs), so a second
request unlearned from an unlearned ensemble keeps the first request's patients out of every retrained stage.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

import medforget
from medforget.core.checkpoint import CheckpointError, atomic_torch_save, read_sidecar, sha256_file
from medforget.systems.classifier import FusionClassifier, FusionEnsemble, export_classifier, load_classifier

log = logging.getLogger("medforget")

LAYOUT = "sha256('medforget-sisa/<seed>/<patient_id>') as integer h: shard = h mod shards, slice = (h div shards) " \
         "mod slices"
SISA_VERSION = 1


# --- layout and seeds ----------------------------------------------------------------------------------------------
def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def assign(patient_id: str, seed: int, shards: int, slices: int) -> tuple[int, int]:
    """``(shard, slice)`` of a patient: a salted hash of its ID, so removing patients never moves another."""
    h = int(_digest(f"medforget-sisa/{seed}/{patient_id}"), 16)
    return h % shards, (h // shards) % slices


def removed_token(patient_id: str, seed: int) -> str:
    """The salted digest under which a removed patient is recorded in an ensemble's provenance."""
    return _digest(f"medforget-sisa-removed/{seed}/{patient_id}")


def derive_seed(seed: int, *parts: object) -> int:
    """A seed in ``[0, 2**31)`` derived from ``seed`` and ``parts`` (shard index, slice index or ``"init"``)."""
    return int(_digest("/".join(map(str, (seed, *parts))))[:8], 16) % 2**31


def slice_rows(df: Any, rows: np.ndarray, seed: int, shards: int, slices: int) -> list[list[np.ndarray]]:
    """``[shard][slice] -> sorted manifest rows`` of the given rows (all studies of a patient together)."""
    patients = df.loc[rows, "patient_id"].astype(str).to_numpy()
    where = {p: assign(p, seed, shards, slices) for p in set(patients)}
    shard_of = np.array([where[p][0] for p in patients], dtype=int)
    slice_of = np.array([where[p][1] for p in patients], dtype=int)
    return [[np.sort(rows[(shard_of == k) & (slice_of == i)]) for i in range(slices)] for k in range(shards)]


# --- data ------------------------------------------------------------------------------------------------------------
def stage_loader(dm: Any, rows: np.ndarray, batch_size: int, seed: int, num_workers: int = 0) -> DataLoader:
    """Shuffled loader over ``rows`` (manifest order, permuted by a generator seeded with ``seed``); the last batch
    is dropped when it would hold one study (BatchNorm), as the datamodule does."""
    dataset = dm.rows_dataset(rows)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True,
                      drop_last=len(dataset) > 1 and len(dataset) % batch_size == 1, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=False)


# --- training ------------------------------------------------------------------------------------------------------
def _verified(path: Path, what: str) -> Path:
    """``path`` if it exists and matches its SHA-256 sidecar; a :class:`CheckpointError` naming it otherwise."""
    if not path.is_file():
        raise CheckpointError(f"{what}: slice checkpoint {path} is missing (moved or deleted?); SISA needs every "
                              "slice checkpoint its ensemble records")
    recorded = read_sidecar(path)
    if recorded is not None and recorded != sha256_file(path):
        raise CheckpointError(f"{what}: slice checkpoint {path} does not match its SHA-256 sidecar (changed since it "
                              "was written)")
    return path


def train_shard(
    shard: int,
    rows_by_slice: list[np.ndarray],
    dm: Any,
    hparams: dict[str, Any],
    recipe: dict[str, Any],
    out_dir: Path,
    start: int = 0,
    previous: Path | None = None,
) -> list[dict[str, Any]]:
    """Train stages ``start..S-1`` of one shard; returns one record per stage written.

    Args:
        shard: Shard index.
        rows_by_slice: Manifest rows of each slice of the shard (removed patients already left out).
        dm: The set-up datamodule (its manifest table and decoded images).
        hparams: The members' FusionClassifier recipe.
        recipe: The SISA recipe (``seed``, ``epochs_per_slice``, ``batch_size``, trainer settings).
        out_dir: Stage checkpoints go to ``out_dir/shard_<shard>/slice_<i>.ckpt``.
        start: First stage to train (0: from scratch).
        previous: Checkpoint of stage ``start - 1`` (needed when ``start > 0``).
    """
    from medforget.models.text import load_tokenizer, train_wordpiece_tokenizer

    seed = int(recipe["seed"])
    records = []
    for i in range(start, len(rows_by_slice)):
        if i == 0:
            if not len(rows_by_slice[0]):
                raise ValueError(f"shard {shard}'s first slice has no study left (the hash layout put no patient, or "
                                 "only removed ones, there): use fewer --shards or --slices")
            L.seed_everything(derive_seed(seed, shard, "init"), workers=True, verbose=False)
            model = FusionClassifier(**hparams)
            if model.uses_text:  # the tokenizer sees this shard's first slice only
                model.tokenizer = (load_tokenizer(hparams["text_encoder"]) if hparams.get("text_encoder") else
                                   train_wordpiece_tokenizer(dm.df.loc[rows_by_slice[0], "report"].tolist(),
                                                             hparams["vocab_size"]))
        else:
            if previous is None:
                raise ValueError(f"shard {shard}: stage {i} needs the checkpoint of stage {i - 1}")
            model = load_classifier(_verified(previous, f"shard {shard}")).train()
        rows = np.sort(np.concatenate(rows_by_slice[: i + 1]))
        stage_seed = derive_seed(seed, shard, i)
        L.seed_everything(stage_seed, workers=True, verbose=False)
        loader = stage_loader(dm, rows, int(recipe["batch_size"]), stage_seed, int(recipe.get("num_workers", 0)))
        trainer = L.Trainer(
            accelerator=recipe.get("accelerator", "cpu"), devices=1, max_epochs=int(recipe["epochs_per_slice"]),
            precision=recipe.get("precision") or "32-true", deterministic=recipe.get("deterministic", True),
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(out_dir),
        )
        begin = time.perf_counter()
        with warnings.catch_warnings():  # stages train without validation (the ensemble is what gets evaluated)
            warnings.filterwarnings("ignore", ".*`validation_step` but have no `val_dataloader`.*")
            trainer.fit(model, train_dataloaders=loader)
        seconds = time.perf_counter() - begin
        path = out_dir / f"shard_{shard}" / f"slice_{i}.ckpt"
        patients = int(dm.df.loc[rows, "patient_id"].nunique())
        export_classifier(model, path, overwrite=True, provenance={
            "kind": "sisa_slice", "shard": shard, "slice": i, "seed": stage_seed, "patients": patients,
            "studies": len(rows), "epochs": int(recipe["epochs_per_slice"]), "fit_seconds": seconds,
            "medforget_version": medforget.__version__,
        })
        records.append({"slice": i, "path": path, "sha256": sha256_file(path), "patients": patients,
                        "studies": len(rows), "fit_seconds": seconds})
        log.info("SISA shard %d slice %d: %d patients, %d studies, %.1f s", shard, i, patients, len(rows), seconds)
        previous = path
    return records


def _relative(path: Path, base: Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(base).resolve())


def _shard_record(shard: int, seed: int, rows_by_slice: list[np.ndarray], df: Any, slices: list[dict[str, Any]],
                  base: Path) -> dict[str, Any]:
    rows = np.concatenate(rows_by_slice)
    return {"shard": shard, "patients": int(df.loc[rows, "patient_id"].nunique()), "studies": len(rows),
            "init_seed": derive_seed(seed, shard, "init"),
            "slices": [{"slice": s["slice"], "path": s["path"] if isinstance(s["path"], str) else
                        _relative(s["path"], base), "sha256": s["sha256"], "patients": s["patients"],
                        "studies": s["studies"]} for s in slices]}


def export_ensemble(members: list[FusionClassifier], path: Path, provenance: dict[str, Any],
                    protect: tuple[str | Path, ...] = ()) -> Path:
    """Write the :class:`FusionEnsemble` of ``members`` atomically (with its SHA-256 sidecar)."""
    for p in protect:
        if Path(p).exists() and path.resolve() == Path(p).resolve():
            raise FileExistsError(f"refusing to overwrite the input checkpoint {p}; choose another --out")
    ensemble = FusionEnsemble(members)
    return atomic_torch_save(ensemble.checkpoint(provenance), path)


def _trainer_settings(cli: Any) -> dict[str, Any]:
    trainer = cli.config.get("trainer") or {}
    accelerator = trainer.get("accelerator") or "auto"
    deterministic = trainer.get("deterministic")
    return {"accelerator": accelerator if isinstance(accelerator, str) else "auto",
            "precision": trainer.get("precision"), "deterministic": True if deterministic is None else deterministic}


def _single_process(flag: str) -> None:
    """Shards are trained one after another in one process: refuse a multi-process (torchrun / DDP) launch, in which
    every rank would write the same slice checkpoints."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(f"{flag} trains the shards one after another in one process, each on one device: launch it "
                         "without torchrun/DDP (WORLD_SIZE > 1 here)")


def check_layout(shards: int | None, slices: int, patients: int) -> None:
    """Refuse a layout that cannot be trained, naming the flag."""
    if shards is None or shards < 1:
        raise ValueError(f"--shards must be a positive integer, got {shards}")
    if slices < 1:
        raise ValueError(f"--slices must be a positive integer, got {slices}")
    if shards > patients:
        raise ValueError(f"--shards {shards} is larger than the number of training patients ({patients}): every "
                         "shard needs patients; use at most that many shards (a few per shard at the very least)")


def train_sharded(cli: Any) -> Path:
    """``train --shards K [--slices S]``: the SISA shards, their slice checkpoints and the ensemble ``model.ckpt``."""
    _single_process("--shards")
    config = cli.config
    shards, slices = config.get("shards"), config.get("slices")
    slices = 1 if slices is None else int(slices)
    seed = config.get("seed_everything")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"--shards needs an integer --seed_everything (the shard seeds derive from it), got {seed!r}")
    if config.get("ckpt_path") is not None:
        raise ValueError("--ckpt_path (resuming) is not supported with --shards; rerun the sharded training")
    dm = cli.datamodule
    dm.setup("fit")
    train_rows = dm.indices["train"]
    check_layout(shards, slices, int(dm.df.loc[train_rows, "patient_id"].nunique()))
    layout = slice_rows(dm.df, train_rows, seed, shards, slices)
    for k in range(shards):
        if not sum(len(r) for r in layout[k]):
            raise ValueError(f"--shards {shards}: the hash layout left shard {k} without patients; use fewer shards")
    out = Path(config.out)
    hparams = {k: v for k, v in dict(cli.model.hparams).items() if not k.startswith("_")}
    trainer_cfg = config.get("trainer") or {}
    recipe = {"seed": seed, "epochs_per_slice": int(trainer_cfg.get("max_epochs") or 25),
              "batch_size": int(dm.batch_size), "num_workers": int(dm.num_workers), **_trainer_settings(cli)}
    excluded = []
    if dm.exclude_patients is not None and "excluded" in dm.indices:
        excluded = sorted({removed_token(str(p), seed) for p in dm.df.loc[dm.indices["excluded"], "patient_id"]})
    start = time.perf_counter()
    records = [train_shard(k, layout[k], dm, hparams, recipe, out / "shards") for k in range(shards)]
    seconds = time.perf_counter() - start
    members = [load_classifier(r[-1]["path"]) for r in records]
    provenance = {
        "kind": "retrained" if dm.exclude_patients else "original",
        "medforget_version": medforget.__version__,
        "split_fingerprint": dm.split_fingerprint,
        "excluded_patients": dm.summary().get("excluded", {}).get("patients", 0),
        "data": dm.provenance(),
        "epochs": recipe["epochs_per_slice"] * slices,
        "fit_seconds": seconds,
        "sisa": {"version": SISA_VERSION, "shards": shards, "slices": slices, "layout": LAYOUT, **recipe,
                 "removed_sha256": excluded,
                 "shard_records": [_shard_record(k, seed, layout[k], dm.df, records[k], out) for k in range(shards)]},
    }
    target = out / "model.ckpt"
    export_ensemble(members, target, provenance)
    print(f"SISA: {shards} shard(s) x {slices} slice(s), {seconds:.1f} s; wrote {target}")
    return target


# --- unlearning ----------------------------------------------------------------------------------------------------
def sisa_record(model: Any, path: str | Path) -> dict[str, Any]:
    """The ``sisa`` provenance of a sharded ensemble; a clear error for any other checkpoint."""
    record = getattr(model, "provenance", {}).get("sisa") if isinstance(model, FusionEnsemble) else None
    if not isinstance(record, dict) or "shard_records" not in record:
        raise ValueError(f"--method SISA needs a sharded ensemble checkpoint (python -m medforget train --shards K); "
                         f"--ckpt {path} is a single model, which SISA cannot unlearn exactly: retrain it without the "
                         "patients, or use another --method")
    return record


def unlearn_sharded(cli: Any, method: Any) -> Path:
    """``unlearn --method SISA``: retrain the shards that hold forget patients; export the new ensemble."""
    _single_process("--method SISA")
    ckpt = Path(cli.config.ckpt)
    ensemble: FusionEnsemble = method.classifier
    parent = sisa_record(ensemble, ckpt)
    dm = cli.datamodule
    seed, shards, slices = int(parent["seed"]), int(parent["shards"]), int(parent["slices"])
    trained_size = ensemble.provenance.get("data", {}).get("image_size")
    if trained_size is not None and int(trained_size) != int(dm.image_size):
        raise ValueError(f"--data.image_size {dm.image_size} differs from the {trained_size} the ensemble {ckpt} was "
                         f"trained with; pass --data.image_size {trained_size}")
    base = ckpt.resolve().parent
    # every slice checkpoint the ensemble records must be there, unchanged (the next request may need any of them)
    paths = {}
    for shard in parent["shard_records"]:
        for s in shard["slices"]:
            paths[(shard["shard"], s["slice"])] = _verified(base / s["path"], f"--ckpt {ckpt}")
    out = Path(cli.config.out)
    forget_patients = sorted(set(dm.df.loc[dm.indices["forget"], "patient_id"].astype(str)))
    removed = set(parent.get("removed_sha256", []))
    new_tokens = {removed_token(p, seed) for p in forget_patients} - removed
    removed |= new_tokens
    affected: dict[int, int] = {}
    for p in forget_patients:
        if removed_token(p, seed) in new_tokens:
            k, i = assign(p, seed, shards, slices)
            affected[k] = min(i, affected.get(k, slices))
    protected = {p.resolve() for p in paths.values()}
    for k, i in affected.items():
        for j in range(i, slices):
            target = (out / "shards" / f"shard_{k}" / f"slice_{j}.ckpt").resolve()
            if target in protected:
                raise FileExistsError(f"refusing to overwrite slice checkpoint {target} of the input ensemble {ckpt}; "
                                      "choose another --out")
            if target.exists() and not cli.config.overwrite:
                raise FileExistsError(f"{target} exists; pass --overwrite true to replace it (or choose another --out)")
    train_rows = dm.indices["train"]
    patients = dm.df.loc[train_rows, "patient_id"].astype(str).to_numpy()
    kept = {p for p in set(patients) if removed_token(p, seed) not in removed}
    rows = train_rows[np.isin(patients, sorted(kept))]
    layout = slice_rows(dm.df, rows, seed, shards, slices)
    hparams = {k: v for k, v in dict(ensemble.hparams).items() if not k.startswith("_")}
    recipe = {**{k: parent[k] for k in ("seed", "epochs_per_slice", "batch_size", "precision", "deterministic")},
              "num_workers": int(dm.num_workers), "accelerator": _trainer_settings(cli)["accelerator"]}
    parent_sha256 = sha256_file(ckpt)
    start = time.perf_counter()
    members = list(ensemble.members)
    records = []
    for shard in parent["shard_records"]:
        k = shard["shard"]
        old = [{**s, "path": _relative(base / s["path"], out)} for s in shard["slices"]]
        if k not in affected:
            records.append({**shard, "slices": old})
            continue
        first = affected[k]
        new = train_shard(k, layout[k], dm, hparams, recipe, out / "shards", start=first,
                          previous=paths[(k, first - 1)] if first > 0 else None)
        members[k] = load_classifier(new[-1]["path"])
        records.append(_shard_record(k, seed, layout[k], dm.df, old[:first] + new, out))
    seconds = time.perf_counter() - start
    retrained = [{"shard": k, "from_slice": i, "slices": list(range(i, slices))} for k, i in sorted(affected.items())]
    summary = dm.summary()
    provenance = {
        "kind": "unlearned",
        "method": "SISA",
        "method_hparams": {k: v for k, v in method.hparams.items() if not k.startswith("_")},
        "medforget_version": medforget.__version__,
        "split_fingerprint": ensemble.provenance.get("split_fingerprint", dm.split_fingerprint),
        "source_checkpoint_kind": ensemble.provenance.get("kind"),
        "parent_sha256": parent_sha256,
        "forget_patients": summary["forget"]["patients"],
        "data": dm.provenance(),
        "unlearn_seconds": seconds,
        "selection": {"monitor": None, "selected": "none: exact retraining of the affected shards"},
        # no checkpoint selection saw forget patients: the audit scores all of them
        "selection_split": {"fraction": 0.0, "seed": dm.seed, "patients": 0},
        "retrained": retrained,
        "sisa": {**{k: v for k, v in parent.items() if k not in ("shard_records", "removed_sha256")},
                 "removed_sha256": sorted(removed), "shard_records": records},
    }
    target = out / "model.ckpt"
    export_ensemble(members, target, provenance, protect=(ckpt,))
    which = ", ".join(f"shard {r['shard']} from slice {r['from_slice']}" for r in retrained) or "none"
    print(f"SISA: retrained {len(affected)} of {shards} shard(s) ({which}) in {seconds:.1f} s; wrote {target}")
    return target
