"""The audit skeleton both audits run on: the settings every audit has, and one run flow.

:meth:`Audit.run` is the flow: **prepare** (check every input before anything is written) -> the forget request's
salt -> **measure** (the task's numbers) -> **timing** -> **criteria** (three-way decisions on patient-bootstrap
intervals, :mod:`medforget.audit.criteria`) -> **verdict** -> the report (header, data, the forget request as salted
hashes, the task's results, timing, criteria, verdict) -> ``<stem>.json``, ``<stem>.md`` and a self-contained
``<stem>.html`` with plots, each written atomically (:func:`medforget.audit.render.write_documents`). A task's audit
(:class:`medforget.audit.classifier.audit.ClassifierAudit`, :class:`medforget.audit.lm.audit.LMAudit`) supplies the
hooks: what it measures, its criteria, its verdict record and its report's blocks.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

from medforget.audit.robustness import QUANTIZATION_SCHEMES
from medforget.audit.verdict import MIN_REPLICATES
from medforget.core.io import write_json
from medforget.core.privacy import HASH_SCHEME, load_or_create_salt, salted_hashes
from medforget.core.provenance import code_version

log = logging.getLogger("medforget")


class AuditSettings:
    """The settings every audit's configuration has (the ``--audit.*`` flags both verbs share). Each audit's
    dataclass declares them among its own fields, in the order of its flags, which is also the order of the
    configuration its report records.

    Attributes:
        bootstrap: Paired patient-bootstrap replicates behind every interval and verdict (0: none, and then no
            criterion is judged).
        seed: Seed of the resamples (and of the task's own random choices).
        plots: Write the PNG plots (embedded in the HTML report).
        quantization: Schemes of the quantization attack (``int8``, ``int4``; empty: off).
        int4_group_size: Group size of the 4-bit round-to-nearest quantization.
    """

    bootstrap: int
    seed: int
    plots: bool
    quantization: list[str]
    int4_group_size: int

    def check_settings(self, strict_bootstrap: bool) -> None:
        """Refuse unknown quantization schemes and a negative bootstrap; with ``strict_bootstrap`` also fewer than
        :data:`~medforget.audit.verdict.MIN_REPLICATES` replicates (otherwise :meth:`Audit.run` warns)."""
        bad = [q for q in self.quantization if q not in QUANTIZATION_SCHEMES]
        if bad:
            raise ValueError(f"audit.quantization: unknown scheme(s) {bad}; choose from {QUANTIZATION_SCHEMES}")
        if self.bootstrap < 0:
            raise ValueError(f"audit.bootstrap must be >= 0, got {self.bootstrap}")
        if strict_bootstrap and 0 < self.bootstrap < MIN_REPLICATES:
            raise ValueError(f"--audit.bootstrap {self.bootstrap}: intervals need at least {MIN_REPLICATES} resamples "
                             f"(0 turns them off, and with them every verdict)")


def timing_of(models: dict[str, dict[str, Any]], reference: str, reference_key: str) -> dict[str, float]:
    """Wall times from the models' provenance: unlearning, training the reference model (as ``reference_key``),
    training the original, and the ratio unlearning / reference training (NaN where unknown)."""

    def seconds(name: str, key: str) -> float:
        value = models.get(name, {}).get("provenance", {}).get(key)
        return float(value) if isinstance(value, (int, float)) else math.nan

    unlearn, trained = seconds("unlearned", "unlearn_seconds"), seconds(reference, "fit_seconds")
    return {"unlearn_seconds": unlearn, reference_key: trained,
            "original_train_seconds": seconds("original", "fit_seconds"),
            "ratio": unlearn / trained if trained and not math.isnan(trained) else math.nan}


def hashed_request(ids: Sequence[str] | Sequence[Sequence[str]], salt: str) -> dict[str, Any]:
    """The forget request as salted hashes (no raw ID): one request (patient IDs) gives its patient count and hashes;
    several (one list of IDs each) a count per request, and one hash list each (the list itself for one)."""
    if all(isinstance(i, str) for i in ids):
        return {"hash": HASH_SCHEME, "patients": len(ids), "salted_hashes": salted_hashes(ids, salt)}
    hashed = [salted_hashes(request, salt) for request in ids]
    return {"hash": HASH_SCHEME, "patients": [len(h) for h in hashed],
            "salted_hashes": hashed[0] if len(hashed) == 1 else hashed}


class Audit(ABC):
    """One audit: the run flow (:meth:`run`) around the hooks a task supplies.

    Args:
        config: What to measure (a dataclass with the :class:`AuditSettings`).
        tolerances: Pass/fail tolerances (a dataclass).
        out: Output directory.
        salt_file: Secret salt of the forget-request hashes (created if missing; default ``<out>/private/salt``).
        cli_config: The configuration to record in the report.
    """

    stem: ClassVar[str]  #: the reports' file name, without suffix
    schema: ClassVar[str | None] = None  #: the report's ``schema`` name (``None``: not written)
    schema_version: ClassVar[int]

    def __init__(self, config: Any, tolerances: Any, out: str | Path, salt_file: str | Path | None = None,
                 cli_config: dict[str, Any] | None = None) -> None:
        self.config, self.tolerances, self.out = config, tolerances, Path(out)
        self.salt_file, self.cli_config = salt_file, cli_config or {}

    # --- the hooks -------------------------------------------------------------------------------------------------
    @abstractmethod
    def prepare(self) -> None:
        """Check every input before anything is written."""

    @abstractmethod
    def measure(self, salt: str) -> None:
        """Measure every model, keeping the numbers on the audit (``salt``: for patient hashes)."""

    @abstractmethod
    def data(self) -> dict[str, Any]:
        """The report's ``data`` section: what was audited, as digests and counts."""

    @abstractmethod
    def forget_ids(self) -> list[str] | list[list[str]]:
        """The forget request's patient IDs (one list per request when there are several); hashed, never written."""

    @abstractmethod
    def results(self) -> dict[str, Any]:
        """The report's sections of measured numbers (after the forget request)."""

    @abstractmethod
    def timing(self) -> dict[str, Any]:
        """The report's ``timing`` (:func:`timing_of`)."""

    @abstractmethod
    def criteria(self, timing: dict[str, Any]) -> list[dict[str, Any]]:
        """Every criterion decided (:mod:`medforget.audit.criteria`)."""

    @abstractmethod
    def verdict(self, checks: list[dict[str, Any]]) -> dict[str, Any]:
        """The report's verdict sections, ``verdict`` first."""

    def closing(self) -> dict[str, Any]:
        """Sections after the verdict (default: none)."""
        return {}

    def recorded_config(self) -> dict[str, Any]:
        """Entries of the report's ``config`` beside ``audit``, ``tolerances`` and ``cli`` (default: none)."""
        return {}

    @abstractmethod
    def write_documents(self, report: dict[str, Any]) -> dict[str, Any]:
        """Write the Markdown and HTML reports (and plots) of ``report`` into :attr:`out`."""

    # --- the flow --------------------------------------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        """Schema, creation time, code version and the configuration."""
        out: dict[str, Any] = {"schema": self.schema} if self.schema else {}
        out.update(schema_version=self.schema_version,
                   created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   code=code_version(),
                   config={"audit": asdict(self.config), "tolerances": asdict(self.tolerances),
                           "cli": self.cli_config, **self.recorded_config()})
        return out

    def run(self) -> dict[str, Any]:
        """Prepare, measure, decide and write ``<stem>.json``, ``<stem>.md`` and ``<stem>.html``; returns the report
        (as written to ``<stem>.json``)."""
        start = time.perf_counter()
        self.prepare()
        if 0 < self.config.bootstrap < MIN_REPLICATES:
            log.warning("audit.bootstrap %d < %d replicates: the intervals are too rough for a report",
                        self.config.bootstrap, MIN_REPLICATES)
        salt = load_or_create_salt(self.salt_file or self.out / "private" / "salt")
        self.measure(salt)
        timing = self.timing()
        checks = self.criteria(timing)
        report = {**self.header(), "data": self.data(), "forget_request": hashed_request(self.forget_ids(), salt),
                  **self.results(), "timing": timing, "criteria": checks, **self.verdict(checks), **self.closing(),
                  "audit_seconds": time.perf_counter() - start}
        write_json(report, self.out / f"{self.stem}.json")
        self.write_documents(report)
        return report
