"""The language-model audit's identity checks: the corpus and split as digests, and the refusal of models trained on
another corpus, split or forget set."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from typing import Any

from medforget.audit.lm.config import (
    REFERENCE,
)
from medforget.datamodules.lm import ClinicalNotesDataModule, check_lm_data

log = logging.getLogger("medforget")


def corpus_identity(datamodule: ClinicalNotesDataModule) -> dict[str, Any]:
    """The corpus and split as settings plus SHA-256 digests (of every record, and of the split): two audits with
    the same digests saw the same patients, questions and split. The digests reveal nothing of the records."""
    datamodule.setup()
    records = json.dumps([asdict(r) for r in datamodule.records], sort_keys=True, ensure_ascii=False)
    split = json.dumps({part: [datamodule.records[p].patient_id for p in pos] for part, pos in
                        sorted(datamodule.parts.items())}, sort_keys=True)
    settings = {k: getattr(datamodule, k) for k in ("corpus", "num_patients", "corpus_seed", "split_seed",
                                                    "forget_fraction", "holdout_fraction")}
    return {"settings": settings, "corpus_sha256": hashlib.sha256(records.encode()).hexdigest(),
            "split_sha256": hashlib.sha256(split.encode()).hexdigest(), "parts": datamodule.summary()}


def check_models(provenances: dict[str, dict[str, Any]], datamodule: ClinicalNotesDataModule,
                 labels: dict[str, str] | None = None) -> None:
    """Refuse an audit whose models were trained on another corpus or split
    (:func:`medforget.datamodules.lm.check_lm_data`),
    whose retain-only model saw forget patients, or whose unlearned model forgot another forget set."""

    labels = labels or {}
    for name, provenance in provenances.items():
        where = labels.get(name, name)
        check_lm_data(provenance, datamodule, where)
        data = provenance.get("data", {})
        fraction = data.get("forget_fraction")
        if name == REFERENCE:
            if data.get("exclude_forget") is False:
                raise ValueError(f"the retain-only model {where} was trained on the forget patients "
                                 "(data.exclude_forget false): train it with --data.exclude_forget true")
            if fraction is not None and fraction < datamodule.forget_fraction - 1e-12:
                raise ValueError(f"the retain-only model {where} excluded a forget fraction of {fraction}, smaller "
                                 f"than the audited {datamodule.forget_fraction}: it saw some forget patients")
            if fraction is not None and fraction > datamodule.forget_fraction + 1e-12:
                log.warning("the retain-only model excluded a forget fraction of %s (audited: %s): it also lacks "
                            "some retain patients", fraction, datamodule.forget_fraction)
        elif name == "unlearned" and provenance.get("kind") == "unlearned" and fraction is not None \
                and abs(fraction - datamodule.forget_fraction) > 1e-12:
            raise ValueError(f"the unlearned model {where} forgot a forget fraction of {fraction}, not the audited "
                             f"{datamodule.forget_fraction}; pass --data.forget_fraction {fraction}")


def provenance_summary(provenance: dict[str, Any]) -> dict[str, Any]:
    keep = ("kind", "method", "method_hparams", "epochs", "fit_seconds", "unlearn_seconds", "quantization",
            "medforget_version", "parent_sha256")
    return {k: provenance[k] for k in keep if k in provenance}
