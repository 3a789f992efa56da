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
