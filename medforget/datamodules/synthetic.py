"""Synthetic hospital: real DICOM chest radiographs + radiology reports for 4-class pulmonary edema severity.

Classes follow Forget-MI's MIMIC-CXR subset: 0 none, 1 vascular congestion, 2 interstitial, 3 alveolar edema.

* Each patient has 1-6 studies. A patient has a fixed anatomy (lung size and position, heart size, rib phase, a smooth
  tissue field) and, for some, devices that show in both modalities (sternotomy wires, a pacemaker, surgical clips),
  so an over-trained model can recognise -- memorise -- a patient.
* The image shows edema through severity-dependent patterns at a noisy latent severity (``image_noise``): hilar vessel
  prominence (congestion), basal septal lines and reticulation (interstitial), perihilar airspace opacity (alveolar).
* The report states the *text* severity, which equals the true class with probability ``text_fidelity`` and is
  otherwise an adjacent class or a vague, non-committal report; findings are phrased with synonyms, negations,
  hedges and typos. Image and text errors are independent, so each modality alone is imperfect and fusion is best.
* A fraction ``label_noise`` of stored labels is flipped to another class: examples a model can only fit by
  memorising them, which gives membership-inference attacks real signal.

Everything is seeded and deterministic. Files are written with pydicom (valid file meta, DX modality, 16-bit
allocated / 12-bit stored, MONOCHROME2 and some MONOCHROME1, rescale and window tags).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medforget.core.console import interactive
from medforget.datamodules.synthetic_reports import write_report

CLASS_NAMES = ("none", "vascular congestion", "interstitial edema", "alveolar edema")
NUM_CLASSES = len(CLASS_NAMES)
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
UID_ROOT = "1.2.826.0.1.3680043.10.1492."  # medforget's synthetic UIDs



@dataclass
class SyntheticConfig:
    """Parameters of the synthetic hospital (all seeded).

    Args:
        num_patients: Number of patients.
        min_studies: Fewest studies (images + reports) per patient.
        max_studies: Most studies per patient.
        image_size: Side of the square images in pixels (up to 224).
        label_noise: Fraction of stored labels flipped to another class.
        image_noise: Std of the latent severity the image shows around the true class.
        text_fidelity: Probability the report states the true class (else an adjacent class or a vague report).
        monochrome1_fraction: Fraction of images stored inverted (MONOCHROME1).
        seed: Random seed; the same seed gives byte-identical pixel data and identical reports.
    """

    num_patients: int = 300
    min_studies: int = 1
    max_studies: int = 6
    image_size: int = 64
    label_noise: float = 0.04
    image_noise: float = 0.45
    text_fidelity: float = 0.65
    monochrome1_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_patients < 1:
            raise ValueError(f"num_patients must be >= 1, got {self.num_patients}")
        if not 1 <= self.min_studies <= self.max_studies:
            raise ValueError(f"need 1 <= min_studies <= max_studies, got {self.min_studies}, {self.max_studies}")
        if not 16 <= self.image_size <= 512:
            raise ValueError(f"image_size must be in [16, 512], got {self.image_size}")
        for name in ("label_noise", "text_fidelity", "monochrome1_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


def _uid(*parts: object) -> str:
    """A deterministic, valid DICOM UID (<= 64 chars) derived from ``parts``."""
    digest = int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:24], 16)
    return UID_ROOT + str(digest)[:64 - len(UID_ROOT)].lstrip("0")


# --- images -------------------------------------------------------------------------------------------------------
def _patient_anatomy(rng: np.random.Generator, size: int) -> dict:
    devices = [d for d, p in (("sternotomy", 0.15), ("pacemaker", 0.12), ("clips", 0.1)) if rng.random() < p]
    field = rng.normal(size=(8, 8))  # smooth, patient-specific tissue texture
    return {
        "lung_w": rng.uniform(0.25, 0.33),
        "lung_h": rng.uniform(0.55, 0.7),
        "lung_dx": rng.uniform(0.36, 0.46),
        "lung_dy": rng.uniform(-0.1, 0.05),
        "heart": rng.uniform(0.22, 0.3),
        "rib_phase": rng.uniform(0, 2 * np.pi),
        "rib_freq": rng.uniform(9.0, 12.0),
        "body": rng.uniform(0.5, 0.62),
        "field": field,
        "devices": devices,
        "spots": rng.uniform(-0.6, 0.6, size=(int(rng.integers(1, 4)), 2)),
    }


def _upsample(field: np.ndarray, size: int) -> np.ndarray:
    idx = np.linspace(0, field.shape[0] - 1, size)
    i0 = np.floor(idx).astype(int)
    i1 = np.minimum(i0 + 1, field.shape[0] - 1)
    w = idx - i0
    rows = field[i0] * (1 - w)[:, None] + field[i1] * w[:, None]
    return rows[:, i0] * (1 - w)[None, :] + rows[:, i1] * w[None, :]


def render_image(anatomy: dict, severity: float, rng: np.random.Generator, size: int) -> np.ndarray:
    """Render one radiograph in [0, 1] (bright = dense), showing edema at a continuous ``severity`` in [0, 3]."""
    a = anatomy
    shift = rng.normal(0, 0.03, size=2)
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    yy, xx = yy - shift[0], xx - shift[1]
    img = np.full((size, size), a["body"]) + 0.04 * _upsample(a["field"], size)
    lungs = np.zeros_like(img)
    for side in (-1, 1):
        cx, cy = side * a["lung_dx"], a["lung_dy"]
        d = ((xx - cx) / a["lung_w"]) ** 2 + ((yy - cy) / a["lung_h"]) ** 2
        lungs = np.maximum(lungs, np.clip(1.5 * (1 - d), 0, 1))
    img -= 0.38 * lungs  # radiolucent lungs
    ribs = 0.5 + 0.5 * np.sin(a["rib_freq"] * (yy + 0.15 * xx**2) * np.pi / 2 + a["rib_phase"])
    img += 0.06 * ribs * lungs
    cardio = a["heart"] * (1 + 0.08 * severity)  # cardiomegaly accompanies edema
    heart = np.exp(-(((xx + 0.1) / cardio) ** 2 + ((yy - 0.35) / (0.7 * cardio)) ** 2))
    img += 0.3 * heart

    congestion, interstitial, alveolar = (float(np.clip(severity - k, 0, 1)) for k in (0, 1, 2))
    for side in (-1, 1):  # hilar vessels fanning out towards the upper zones
        hx, hy = side * 0.22, -0.05
        ang = np.arctan2(yy - hy, (xx - hx) * side)
        r = np.hypot(xx - hx, yy - hy)
        fan = (0.5 + 0.5 * np.cos(7 * ang)) ** 4 * np.exp(-r / 0.35) * (ang < 0.6)
        img += 0.22 * congestion * fan * lungs
    if interstitial > 0:  # septal lines at the bases + reticulation
        septal = (0.5 + 0.5 * np.cos(np.pi * yy * size / 4)) ** 6 * (np.abs(xx) > 0.55) * (yy > 0.15)
        reticular = rng.normal(size=(size // 4, size // 4))
        img += interstitial * lungs * (0.18 * septal + 0.05 * _upsample(reticular, size))
    if alveolar > 0:  # perihilar "bat-wing" airspace opacity
        wing = np.exp(-((np.abs(xx) - 0.3) ** 2 / 0.05 + (yy + 0.05) ** 2 / 0.12))
        img += 0.4 * alveolar * wing * lungs
    if "sternotomy" in a["devices"]:
        for k in range(5):
            img += 0.5 * np.exp(-((xx + 0.02) ** 2 + (yy + 0.5 - 0.18 * k) ** 2) / 0.0015)
    if "pacemaker" in a["devices"]:
        img += 0.6 * np.exp(-((xx - 0.55) ** 2 / 0.01 + (yy + 0.7) ** 2 / 0.005))
    if "clips" in a["devices"]:
        img += 0.5 * np.exp(-((xx + 0.5) ** 2 + (yy - 0.75) ** 2) / 0.0015)
    for sx, sy in a["spots"]:  # calcified granulomas: fixed per patient
        img += 0.25 * np.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / 0.002)
    gain = rng.normal(1.0, 0.05)
    img = img * gain + rng.normal(0, 0.04, size=img.shape)
    return np.clip(img, 0.0, 1.0)




# --- DICOM --------------------------------------------------------------------------------------------------------
def write_dicom(
    path: Path,
    image: np.ndarray,
    *,
    patient_id: str,
    study_uid: str,
    sop_uid: str,
    series_uid: str,
    monochrome1: bool = False,
    rescale_intercept: float = 0.0,
    window: tuple[float, float] = (2048.0, 4096.0),
    study_date: str = "20260101",
) -> None:
    """Write a [0, 1] image as a 12-bit DX DICOM file whose windowed display reproduces it.

    Modality values are ``image * 4095``; stored values are ``(value - rescale_intercept)`` and are inverted for
    MONOCHROME1 so that the reader's inversion restores the same display.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    value = np.round(image * 4095.0)
    stored = value - rescale_intercept
    if monochrome1:
        stored = (4095.0 - value) - rescale_intercept
    stored = stored.astype(np.uint16)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = f"SYNTHETIC^{patient_id}"
    ds.StudyDate = study_date
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "AP"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if rescale_intercept < 0 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = rescale_intercept
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter, ds.WindowWidth = window
    if monochrome1:  # window in modality units of the stored (inverted) data
        ds.WindowCenter = 4096.0 - window[0]  # mirror of the PS3.3 linear window about 4095 (not 4095 - c)
    ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)


# --- the hospital -------------------------------------------------------------------------------------------------
def generate_hospital(out: str | Path, config: SyntheticConfig | None = None, overwrite: bool = False) -> Path:
    """Write a synthetic hospital (DICOM images, manifest.csv with reports) to ``out``; return the manifest path.

    Args:
        out: Output directory. Must not exist (or be empty) unless ``overwrite``.
        config: Generator parameters; defaults to :class:`SyntheticConfig`.
        overwrite: Replace an existing hospital in ``out``.
    """
    cfg = config or SyntheticConfig()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(out)
    work = out.with_name(out.name + ".partial")
    if work.exists():
        shutil.rmtree(work)
    rows = []
    n_digits = max(4, len(str(cfg.num_patients)))
    for p in tqdm(range(cfg.num_patients), desc="synthetic hospital", unit="patient", leave=False,
                  disable=not interactive()):
        patient_id = f"MF{p:0{n_digits}d}"
        prng = np.random.default_rng([cfg.seed, p])
        anatomy = _patient_anatomy(prng, cfg.image_size)
        baseline = int(prng.integers(NUM_CLASSES))
        n_studies = int(prng.integers(cfg.min_studies, cfg.max_studies + 1))
        for s in range(n_studies):
            srng = np.random.default_rng([cfg.seed, p, s])
            true_class = int(np.clip(baseline + srng.choice([-1, 0, 0, 1]), 0, NUM_CLASSES - 1))
            severity = float(np.clip(true_class + 0.5 + srng.normal(0, cfg.image_noise), 0, 3.5)) - 0.5
            image = render_image(anatomy, max(severity, 0.0), srng, cfg.image_size)
            u = srng.random()
            if u < cfg.text_fidelity:
                text_class: int | None = true_class
            elif u < cfg.text_fidelity + (1 - cfg.text_fidelity) * 0.6:
                text_class = int(np.clip(true_class + srng.choice([-1, 1]), 0, NUM_CLASSES - 1))
            else:
                text_class = None
            report = write_report(text_class, anatomy["devices"], srng)
            label = true_class
            if srng.random() < cfg.label_noise:
                label = int((true_class + srng.integers(1, NUM_CLASSES)) % NUM_CLASSES)
            study_id = f"{patient_id}-S{s + 1:02d}"
            rel = Path("images") / patient_id / f"{study_id}.dcm"
            write_dicom(
                work / rel,
                image,
                patient_id=patient_id,
                study_uid=_uid(cfg.seed, patient_id, s, "study"),
                series_uid=_uid(cfg.seed, patient_id, s, "series"),
                sop_uid=_uid(cfg.seed, patient_id, s, "sop"),
                monochrome1=bool(srng.random() < cfg.monochrome1_fraction),
                rescale_intercept=-1024.0 if srng.random() < 0.2 else 0.0,
                window=(2048.0 + srng.normal(0, 60), 4096.0 + srng.normal(0, 150)),
                study_date=f"2025{1 + s:02d}{1 + p % 28:02d}",
            )
            rows.append(
                {
                    "patient_id": patient_id,
                    "study_id": study_id,
                    "image_path": rel.as_posix(),
                    "report": report,
                    "label": label,
                    "true_label": true_class,
                }
            )
    manifest = pd.DataFrame(rows)
    manifest.to_csv(work / "manifest.csv", index=False)
    pd.Series(asdict(cfg)).to_json(work / "synthetic_config.json", indent=2)
    if out.exists():
        out.rmdir()
    os.replace(work, out)
    return out / "manifest.csv"
