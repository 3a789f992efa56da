"""Patient IDs never leave the hospital's files: reports and audits carry salted SHA-256 hashes, under a secret salt
kept in a private file."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

#: how :func:`salted_hash` is computed, as audits record it
HASH_SCHEME = "sha256(salt:patient_id)[:16]"


def load_or_create_salt(path: str | Path) -> str:
    """The audit's secret salt: read from ``path``, or created there (mode 0600). Keep it private: with the salt,
    anyone holding a patient ID can check whether it was in the request."""
    path = Path(path)
    if path.exists():
        salt = path.read_text().strip()
        if not salt:
            raise ValueError(f"salt file {path} is empty")
        return salt
    path.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(salt + "\n")
    return salt


def salted_hash(patient_id: str, salt: str) -> str:
    """Salted SHA-256 of a patient ID, for reports that must not contain PHI."""
    return hashlib.sha256(f"{salt}:{patient_id}".encode()).hexdigest()[:16]


def salted_hashes(patient_ids: Iterable[str], salt: str) -> list[str]:
    """The sorted salted hashes of a set of patient IDs: how both audits record a forget request."""
    return sorted(salted_hash(pid, salt) for pid in patient_ids)
