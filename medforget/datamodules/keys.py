"""Batch dictionary keys shared by datamodules, models and unlearning systems."""

IMAGE = "image"  # (B, 1, H, W) float in [0, 1]
REPORT = "report"  # list[str] of length B (raw text; tokenized by the system that owns the tokenizer)
INPUT_IDS = "input_ids"  # (B, L) long
ATTENTION_MASK = "attention_mask"  # (B, L) long
LABEL = "label"  # (B,) long
PATIENT_ID = "patient_id"  # list[str]; never logged
STUDY_ID = "study_id"  # list[str]; never logged
INDEX = "index"  # (B,) long, row of the manifest

FORGET = "forget"
RETAIN = "retain"
FORGET_SELECTION = "forget_selection"  # forget patients that checkpoint selection may see (never audited)
RETAIN_SAMPLE = "retain_sample"  # seeded sample of retain patients, validated in unlearn mode
VAL = "val"

# Validation dataloaders of the unlearn mode, in dataloader_idx order (checkpoint selection, see
# medforget.methods.classifier.selection): the selection part of the forget patients (the audit scores only the
# others), a sample of retain patients and the held-out val patients. Empty parts are left out
# (datamodule.validation_parts).
UNLEARN_VALIDATION_PARTS = (FORGET_SELECTION, RETAIN_SAMPLE, VAL)

# Set (with a blank image) only on items whose DICOM could not be read (image_transforms(on_error="mark")); the
# datamodule lists those files at setup and keeps them out of every loader.
IMAGE_ERROR = "image_error"
