"""The manifest: how a hospital plugs its data in (one row per image/study).

Required columns: ``patient_id``, ``study_id``, ``image_path`` (DICOM, relative to the manifest's folder or absolute),
``report`` (text) or ``report_path`` (a text file), ``label`` (int class). Optional: ``split`` (train/val/test).
Validation happens up front and lists every bad row instead of failing mid-epoch.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd

REQUIRED = ("patient_id", "study_id", "image_path", "label")
SPLITS = ("train", "val", "test")
MAX_LISTED = 50


class ManifestError(ValueError):
    """A manifest failed validation; ``problems`` lists every bad row or column."""

    def __init__(self, path: str | Path, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        shown = problems[:MAX_LISTED]
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        super().__init__(
            f"manifest {path} has {len(problems)} problem(s):\n  " + "\n  ".join(shown) + more
        )


def _read_table(path: Path) -> pd.DataFrame:
    """The manifest as a table of strings; a file that is not a readable table is a :class:`ManifestError`."""
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv", ".tsv", ".txt"):
        raise ManifestError(path, [f"unsupported format {path.suffix!r} (use .csv, .tsv or .parquet)"])
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        with open(path, "rb") as f:
            head = f.read(4)
        # UTF-8 (a BOM is dropped) or UTF-16 with a BOM (Excel's "Unicode text"); anything else is an error
        encoding = "utf-16" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False,
                           encoding=encoding)
    except UnicodeError as err:
        where = f" (byte {err.start})" if isinstance(err, UnicodeDecodeError) else ""
        raise ManifestError(path, [f"file encoding: not UTF-8 text{where}; save the manifest as UTF-8 "
                                   f"(in Excel: 'CSV UTF-8')"]) from err
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as err:
        message = " ".join(str(err).split())[:300]
        raise ManifestError(path, [f"not a readable {suffix.lstrip('.')} table ({type(err).__name__}: "
                                   f"{message})"]) from err


def load_manifest(path: str | Path, num_classes: int, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a manifest.

    Args:
        path: CSV, TSV or Parquet file.
        num_classes: Labels must be integers in ``[0, num_classes)``.
        check_files: Check that every image (and report) file exists.

    Returns:
        A frame with columns ``patient_id, study_id, image_path`` (absolute), ``report`` (text), ``label`` (int),
        ``split`` (if given) and any extra columns, indexed ``0..N-1`` in file order.

    Raises:
        ManifestError: listing every bad row (missing file, empty report, label out of range, duplicate row,
            patient in two splits, ...).
    """
    path = Path(path)
    df = _read_table(path).reset_index(drop=True)
    root = path.parent
    problems: list[str] = []
    missing = [c for c in REQUIRED if c not in df.columns]
    if "report" not in df.columns and "report_path" not in df.columns:
        missing.append("report (or report_path)")
    if missing:
        raise ManifestError(path, [f"missing required column(s): {', '.join(missing)}; found {list(df.columns)}"])
    df = df.copy()
    for col in ("patient_id", "study_id", "image_path"):
        df[col] = df[col].astype(str).str.strip()

    reports: list[str] = []
    labels: list[int] = []
    image_paths: list[str] = []
    # plain dicts, not iterrows(): a pandas Series per row costs ~0.3 ms, seconds for a hospital's manifest
    for i, row in enumerate(df.to_dict("records")):
        where = f"row {i + 2} (study_id={row['study_id']!r})"  # +2: header line, 1-based
        for col in ("patient_id", "study_id", "image_path"):
            if row[col] in ("", "nan", "None"):
                problems.append(f"{where}: empty {col}")
        image = Path(row["image_path"])
        image = image if image.is_absolute() else root / image
        image_paths.append(str(image))
        if check_files and row["image_path"] and not image.is_file():
            problems.append(f"{where}: image_path file not found: {image}")
        text, report_file_missing = "", False
        if "report" in df.columns and isinstance(row["report"], str) and row["report"].strip():
            text = row["report"]
        elif "report_path" in df.columns and str(row.get("report_path", "")).strip():
            rpath = Path(str(row["report_path"]))
            rpath = rpath if rpath.is_absolute() else root / rpath
            if not rpath.is_file():
                problems.append(f"{where}: report_path file not found: {rpath}")
                report_file_missing = True
            else:
                text = rpath.read_text(encoding="utf-8", errors="replace")
        if not text.strip() and not report_file_missing:
            problems.append(f"{where}: empty report")
        reports.append(text)
        raw = str(row["label"]).strip()
        try:
            value = float(raw)
            if not value.is_integer():
                raise ValueError
            label = int(value)
        except ValueError:
            problems.append(f"{where}: label {raw!r} is not an integer")
            label = -1
        else:
            if not 0 <= label < num_classes:
                problems.append(f"{where}: label {label} out of range [0, {num_classes})")
        labels.append(label)

    # the same study and image file, however the path is written (relative or absolute, with ./ or ../)
    same_file = pd.DataFrame({"study_id": df["study_id"], "image": [os.path.normpath(p) for p in image_paths]})
    dup = same_file.duplicated(keep="first")
    for i in df.index[dup]:
        problems.append(f"row {i + 2} (study_id={df.at[i, 'study_id']!r}): duplicate of an earlier row")
    if "split" in df.columns:
        df["split"] = df["split"].astype(str).str.strip().str.lower()
        for i in df.index[~df["split"].isin(SPLITS)]:
            problems.append(f"row {i + 2}: split {df.at[i, 'split']!r} is not one of {SPLITS}")
        per_patient = df.groupby("patient_id")["split"].nunique()
        for pid in per_patient.index[per_patient > 1]:
            rows = [str(r + 2) for r in df.index[df["patient_id"] == pid]]
            problems.append(
                f"patient in rows {', '.join(rows)} appears in several splits "
                f"({sorted(set(df.loc[df['patient_id'] == pid, 'split']))}); splits must be patient-level"
            )
    if problems:
        raise ManifestError(path, problems)
    df["image_path"] = image_paths
    df["report"] = reports
    df["label"] = labels
    return df.drop(columns=[c for c in ("report_path",) if c in df.columns])


def manifest_hash(path: str | Path) -> str:
    """SHA-256 of the manifest file's bytes (for audit reports)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
