"""Patient-level, seeded splits and forget requests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd


class ForgetRequestError(ValueError):
    """A forget request names patients that cannot be forgotten (unknown, or not in the training split)."""


def patient_split(
    patient_ids: Iterable[str], val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, str]:
    """Assign every patient to ``train``, ``val`` or ``test`` (seeded; independent of row order).

    Args:
        patient_ids: Patient IDs (duplicates allowed: one per row).
        val_fraction: Fraction of patients in ``val``.
        test_fraction: Fraction of patients in ``test``.
        seed: Random seed.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"need val_fraction, test_fraction >= 0 and sum < 1, got {val_fraction}, {test_fraction}")
    patients = sorted(set(patient_ids))
    order = np.random.default_rng(seed).permutation(len(patients))
    n_test = int(round(test_fraction * len(patients)))
    n_val = int(round(val_fraction * len(patients)))
    split = {}
    for rank, i in enumerate(order):
        split[patients[i]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return split


def assign_splits(df: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> pd.Series:
    """The split of every row: the manifest's ``split`` column if present, else :func:`patient_split`."""
    if "split" in df.columns:
        return df["split"]
    mapping = patient_split(df["patient_id"], val_fraction, test_fraction, seed)
    return df["patient_id"].map(mapping)


def read_patient_ids(request: str | Path | Sequence[str]) -> list[str]:
    """Read a forget request: a file with one patient ID per line (``#`` comments allowed) or a list of IDs."""
    if isinstance(request, (str, Path)):
        path = Path(request)
        if not path.is_file():
            raise FileNotFoundError(f"forget request file not found: {path}")
        lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
        ids = [line for line in lines if line]
        if not ids:
            raise ForgetRequestError(f"forget request {path} lists no patient IDs")
        return list(dict.fromkeys(ids))
    ids = [str(i).strip() for i in request]
    return list(dict.fromkeys(i for i in ids if i))


def check_forget_request(
    ids: Sequence[str], part_of: Mapping[str, str], source: str, unit: str = "manifest", trained: str = "train"
) -> None:
    """Refuse a forget request naming unknown patients or patients outside the trained part.

    Args:
        ids: The request's patient IDs, in request order (:func:`read_patient_ids`).
        part_of: Every known patient's part (``train``/``val``/``test``; for the clinical-notes corpus
            ``trained``/``holdout``).
        source: What to call the request in the message (its file name).
        unit: What the patients belong to (``manifest``, ``corpus``).
        trained: The part the model was trained on.

    Raises:
        ForgetRequestError: naming the offending entries by position in the request (1-based), never the IDs.
    """
    unknown = [n for n, pid in enumerate(ids, 1) if pid not in part_of]
    held_out = [(n, part_of[pid]) for n, pid in enumerate(ids, 1) if pid in part_of and part_of[pid] != trained]
    problems = []
    if unknown:
        problems.append(f"entries {unknown} are not patients of this {unit}")
    if held_out:
        listed = ", ".join(f"#{n} ({part})" for n, part in held_out)
        parts = "/".join(sorted(set(part_of.values()) - {trained}))
        problems.append(
            f"entries {listed} are not in the training split, so the model never saw them; "
            f"{parts} patients cannot be forgotten"
        )
    if problems:
        raise ForgetRequestError(f"{source}: " + "; ".join(problems))


def resolve_forget(request: str | Path | Sequence[str], splits: pd.Series, patient_ids: pd.Series) -> np.ndarray:
    """Row indices of every study of the requested patients.

    Raises:
        ForgetRequestError: if a patient is unknown or not in the training split (test/val patients were never
            trained on); the message names the offending IDs' positions in the request, never the IDs themselves.
    """
    ids = read_patient_ids(request)
    source = str(request) if isinstance(request, (str, Path)) else "forget request"
    per_patient = pd.Series(splits.values, index=patient_ids.values).groupby(level=0).first()
    check_forget_request(ids, per_patient.to_dict(), source)
    return np.flatnonzero(patient_ids.isin(set(ids)).to_numpy())


def sample_forget_request(
    train_patients: Sequence[str], fraction: float, seed: int = 0, strata: Mapping[str, object] | None = None
) -> list[str]:
    """Draw a forget request of ``fraction`` of the training patients (at least one), seeded.

    Args:
        train_patients: Training patient IDs (duplicates allowed).
        fraction: Fraction of patients to draw.
        seed: Random seed.
        strata: Optional ``patient -> stratum`` (e.g. the patient's most frequent label). Patients are then drawn
            from every stratum in proportion to its size (largest remainders), so the request is representative of
            the training population and forget-set metrics are not dominated by an unlucky class mix.
    """
    patients = sorted(set(train_patients))
    n = max(1, int(round(fraction * len(patients))))
    rng = np.random.default_rng(seed)
    if strata is None:
        return sorted(rng.choice(patients, size=n, replace=False).tolist())
    groups: dict[str, list[str]] = {}
    for p in patients:
        groups.setdefault(str(strata[p]), []).append(p)
    names = sorted(groups)
    quota = np.array([n * len(groups[g]) / len(patients) for g in names])
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: n - int(take.sum())]:
        take[i] += 1
    chosen = [p for g, k in zip(names, take, strict=True) for p in rng.choice(groups[g], size=k, replace=False)]
    return sorted(map(str, chosen))


def patient_strata(df: pd.DataFrame, label_column: str = "label") -> dict[str, int]:
    """Each patient's most frequent label (ties: the lowest), for stratified forget requests."""
    return {str(p): int(g.mode().min()) for p, g in df.groupby("patient_id")[label_column]}


def write_patient_ids(ids: Sequence[str], path: str | Path) -> Path:
    """Write one patient ID per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(ids) + "\n")
    return path


MIN_AUDIT_PATIENTS = 2  # forget patients the audit must keep when some are set aside for checkpoint selection


def selection_patients(forget_patients: Sequence[str], fraction: float, seed: int = 0) -> list[str]:
    """The forget patients that checkpoint selection may look at; the audit scores only the others.

    Selecting the epoch on the same forget samples that the audit then attacks is a winner's curse, so a seeded
    ``fraction`` of the request (at least one patient when ``fraction > 0``) is set aside for selection and never
    audited. The draw depends only on the sorted patient IDs, the fraction and the seed, so the unlearn run and the
    audit (which reads the fraction and seed from the unlearned checkpoint's provenance) agree without writing any ID.

    Raises:
        ValueError: ``fraction`` outside ``[0, 1)``, or too few patients to keep :data:`MIN_AUDIT_PATIENTS` for the
            audit (the message names ``--data.selection_fraction``).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"--data.selection_fraction must lie in [0, 1), got {fraction}")
    patients = sorted(set(map(str, forget_patients)))
    if fraction == 0.0 or not patients:
        return []
    n = max(1, int(round(fraction * len(patients))))
    if len(patients) - n < MIN_AUDIT_PATIENTS:
        raise ValueError(
            f"the forget request has {len(patients)} patient(s); --data.selection_fraction {fraction:g} sets {n} "
            f"aside for checkpoint selection and the audit needs at least {MIN_AUDIT_PATIENTS} others: pass "
            f"--data.selection_fraction 0 (checkpoint selection then uses the retain sample and val patients only)")
    return sorted(np.random.default_rng(seed).choice(patients, size=n, replace=False).tolist())
