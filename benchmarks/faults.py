"""Fault campaign (issue 18): many seeded random faults, each must end in a clear error or a clean result.

    python benchmarks/faults.py                 # the full campaign (<= 15 min on 2 CPU cores)
    python benchmarks/faults.py --quick         # a few trials of each campaign (what tests/test_faults.py runs)
    python benchmarks/faults.py --campaigns kills disk_full --seed 1

Writes ``benchmarks/results/faults.json`` (``--out``): per campaign ``trials``, ``clear_error`` (refused with an
error that names the file, row, column or lock), ``ok`` (worked: decoded, accepted, resumed, ...), ``crash`` (any
other exception, a hang past the timeout, a dead worker), ``lost`` (work or inputs lost: a run that cannot be
resumed, a changed input file), ``partial`` (a partial ``model.ckpt`` / audit file, or a temporary file left behind;
for the kills: once the next run in the folder is done, which removes a killed writer's temporary file), and up to
``MAX_EXAMPLES`` examples of each bad outcome. Targets: crash = lost = partial = 0.

Campaigns, on a tiny synthetic hospital:

- ``dicom_corruptions``: copies of valid DICOM files with random byte flips, truncations, deleted or garbled tags
  (Rows, Columns, BitsAllocated, PhotometricInterpretation, TransferSyntaxUID, PixelData, ...), each loaded through
  the real ``DicomReportDataModule.setup`` in a worker process (timeout: a hang is a crash).
- ``manifest_fuzz``: manifests mutated by hypothesis (missing / extra columns, unicode and control characters, huge
  strings, negative / float / NaN labels, duplicated rows, BOM, mixed line endings, Excel-style quoting, ...),
  each through ``DicomReportDataModule.setup``; an error must name the manifest and a row or column.
- ``kills``: ``train`` and ``unlearn`` killed with SIGKILL at random times, then rerun with ``--ckpt_path last``;
  the result must equal an uninterrupted run's (within ``KILL_TOLERANCE``), no partial ``model.ckpt`` may exist at
  any time, and the manifest, input checkpoint and forget request must stay byte-identical.
- ``disk_full``: checkpoint exports and audit writes into a tiny tmpfs (as root; otherwise a monkeypatched write
  raising ENOSPC) filled to a random level: a clear error, no partial output, inputs intact.
- ``concurrent_out``: a second ``unlearn`` into the ``--out`` of a running one is refused at once naming the lock;
  a stale lock of a dead pid is taken over with a warning.
- ``tampered_checkpoints``: a checkpoint whose pickle executes code, truncated checkpoints and one with a changed
  tensor shape, through every entry point that reads a checkpoint: each refused with a clear error, nothing executed.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import io
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "faults.json"
COUNTS = ("trials", "clear_error", "ok", "crash", "lost", "partial")
MAX_EXAMPLES = int(os.environ.get("FAULTS_MAX_EXAMPLES", "5"))
# A resumed run restarts its epoch's data order and dropout from the seed, so it is close to, not bit-equal with, an
# uninterrupted run: "equal within the tolerance of resumed training" is a weight difference (max |resumed -
# uninterrupted| / max |uninterrupted|) below KILL_TOLERANCE x a natural scale: for train, the difference between two
# uninterrupted runs that differ only in --seed_everything; for unlearn (FineTune draws no random numbers), how far
# the uninterrupted run moved the weights from its input checkpoint. A run killed before its first epoch ended
# restarts from scratch and is bit-equal.
KILL_TOLERANCE = 0.5
# the recipe as API arguments (the setup's original model) and as the command-line flags of the runs the campaigns
# launch and kill (``python -m medforget <verb>`` or ``cli.main`` in a forked worker: the CLI is what they test)
TINY_MODEL_ARGS = {"image_width": 8, "text_hidden": 32, "vocab_size": 256, "joint_dim": 32, "max_length": 48}
TINY_DATA_ARGS = {"image_size": 32, "batch_size": 8}
QUIET_TRAINER = {"accelerator": "cpu", "enable_progress_bar": False, "logger": False}


def _flags(group: str, values: dict[str, Any]) -> list[str]:
    """``{"logger": False}`` under ``trainer`` -> ``["--trainer.logger=false"]`` (as :func:`medforget.api.flags`)."""
    return [f"--{group}.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items()]


TINY_MODEL = _flags("model", TINY_MODEL_ARGS)
TINY_DATA = _flags("data", TINY_DATA_ARGS)
QUIET = _flags("trainer", QUIET_TRAINER)
# full / quick trial counts
TRIALS = {"dicom_corruptions": (320, 10), "manifest_fuzz": (320, 20), "kills": (20, 2), "disk_full": (40, 4),
          "concurrent_out": (4, 1), "tampered_checkpoints": (None, None)}


# --- bookkeeping ---------------------------------------------------------------------------------------------------
class Tally:
    """Outcome counts of one campaign and a few examples of everything that is not ok / clear_error."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts = dict.fromkeys(COUNTS, 0)
        self.kinds: dict[str, dict[str, int]] = {}
        self.examples: list[dict[str, Any]] = []
        self.start = time.perf_counter()

    def add(self, outcome: str, kind: str = "", detail: str = "", lost: bool = False, partial: bool = False) -> None:
        assert outcome in ("ok", "clear_error", "crash"), outcome
        self.counts["trials"] += 1
        self.counts[outcome] += 1
        self.counts["lost"] += int(lost)
        self.counts["partial"] += int(partial)
        if kind:
            by_kind = self.kinds.setdefault(kind, {})
            by_kind[outcome] = by_kind.get(outcome, 0) + 1
        if (outcome == "crash" or lost or partial) and len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"kind": kind, "outcome": outcome, "lost": lost, "partial": partial,
                                  "detail": detail[-1500:]})

    def result(self, **extra: Any) -> dict[str, Any]:
        return {**self.counts, "by_kind": self.kinds, "examples": self.examples,
                "seconds": round(time.perf_counter() - self.start, 1), **extra}


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Temporary files of an atomic write (``.<name>.*.tmp``) left in ``folder`` (recursively)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*.tmp")) if folder.exists() else []


def names_the_file(message: str, *paths: str | Path) -> bool:
    return any(str(p) in message for p in paths)


# --- an isolated worker: a hang or a dead process is a crash, not the end of the campaign --------------------------
def _serve(conn: Any, fn: Callable[[Any], Any]) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    while True:
        task = conn.recv()
        if task is None:
            return
        try:
            conn.send(("done", fn(task)))
        except BaseException as err:  # noqa: BLE001 - sent to the parent, which classifies it
            conn.send(("raised", f"{type(err).__name__}: {err}\n{traceback.format_exc()[-1500:]}"))


class Isolated:
    """Runs ``fn(task)`` in a forked worker process with a timeout per task; restarts the worker after a hang or a
    death. ``run`` returns ``("done", value)``, ``("raised", text)``, ``("hang", text)`` or ``("died", text)``."""

    def __init__(self, fn: Callable[[Any], Any], timeout: float) -> None:
        self.fn, self.timeout = fn, timeout
        self.process: Any = None

    def _start(self) -> None:
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, self.fn), daemon=True)
        self.process.start()

    def run(self, task: Any) -> tuple[str, Any]:
        if self.process is None or not self.process.is_alive():
            self._start()
        self.conn.send(task)
        if not self.conn.poll(self.timeout):
            self.close(kill=True)
            return "hang", f"no answer within {self.timeout} s"
        try:
            return self.conn.recv()
        except EOFError:
            self.process.join(5)
            code = self.process.exitcode
            self.process = None
            return "died", f"worker died (exit code {code})"

    def close(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            with contextlib.suppress(OSError, BrokenPipeError):
                self.conn.send(None)
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.process = None


# --- the tiny hospital and a trained model -------------------------------------------------------------------------
def make_hospital(root: Path, num_patients: int = 10) -> Path:
    from medforget.datamodules.synthetic import SyntheticConfig, generate_hospital

    return generate_hospital(root / "hospital", SyntheticConfig(num_patients=num_patients, image_size=32,
                                                                max_studies=2, seed=3))


def quiet() -> contextlib.AbstractContextManager:
    """Silence stdout/stderr of in-process runs (Lightning prints a lot)."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


# --- dicom_corruptions ---------------------------------------------------------------------------------------------
TAGS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PhotometricInterpretation", "SamplesPerPixel",
        "PixelRepresentation", "PixelData", "TransferSyntaxUID", "RescaleSlope", "WindowWidth", "NumberOfFrames")
GARBAGE = {
    "Rows": [0, 1, 7, 65535], "Columns": [0, 3, 65535], "BitsAllocated": [0, 1, 3, 12, 24, 64],
    "BitsStored": [0, 17, 40], "HighBit": [0, 31, 100], "SamplesPerPixel": [0, 3, 9],
    "PixelRepresentation": [1, 7], "PhotometricInterpretation": ["RGB", "YBR_FULL", "PALETTE COLOR", "", "X\x00Y",
                                                                  "MONOCHROME3", "ÄÖÜ"],
    "TransferSyntaxUID": ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.2", "1.2.3.4",
                          "garbage", "1.2.840.10008.1.2.4.90"],
    "RescaleSlope": ["0", "nan", "1e400", "-inf", "abc"], "WindowWidth": ["0", "-5", "nan", "1e308"],
    "NumberOfFrames": ["0", "-1", "999", "x"], "PixelData": [b"", b"\x00", b"\xff" * 7],
}


def corrupt_dicom(src: Path, dst: Path, rng: random.Random) -> str:
    """Write a corrupted copy of ``src`` to ``dst``; returns the kind of corruption."""
    import warnings

    import pydicom

    warnings.filterwarnings("ignore", module="pydicom")  # the invalid values are the point
    data = bytearray(src.read_bytes())
    kind = rng.choice(["flip", "flip", "truncate", "truncate", "delete_tag", "garble_tag", "garble_tag", "zero_run",
                       "append"])
    if kind == "flip":
        for _ in range(rng.choice([1, 2, 8, 64])):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del data[rng.randrange(len(data)):]
    elif kind == "zero_run":
        start, n = rng.randrange(len(data)), rng.randrange(1, 512)
        data[start:start + n] = bytes(len(data[start:start + n]))
    elif kind == "append":
        data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    if kind in ("delete_tag", "garble_tag"):
        ds = pydicom.dcmread(io.BytesIO(bytes(data)), force=True)
        tag = rng.choice(TAGS)
        kind = f"{kind}:{tag}"
        target = ds.file_meta if tag == "TransferSyntaxUID" else ds
        if kind.startswith("delete_tag"):
            if tag in target:
                delattr(target, tag)
        else:
            value = rng.choice(GARBAGE[tag])
            try:
                setattr(target, tag, value)
            except Exception:  # noqa: BLE001 - pydicom refused the value: write it as raw bytes instead
                elem = target[tag] if tag in target else None
                if elem is not None:
                    elem._value = str(value)  # unchecked: exactly the garbage a broken writer leaves
        buffer = io.BytesIO()
        try:
            ds.save_as(buffer, enforce_file_format=False)
        except Exception:  # noqa: BLE001 - the edit cannot be written: write it at the byte level
            buffer = io.BytesIO(bytes(data))
            raw = buffer.getvalue().replace(b"1.2.840.10008.1.2.1", b"9.9.999.99999.9.9.9")
            buffer = io.BytesIO(raw)
        data = bytearray(buffer.getvalue())
    dst.write_bytes(bytes(data))
    return kind


def _dicom_trial(task: dict[str, Any]) -> dict[str, Any]:
    """Set up the real datamodule on a manifest whose first row is the corrupted file."""
    import numpy as np

    from medforget.datamodules.dicom import DicomError
    from medforget.datamodules.dicom_report import DicomReportDataModule
    from medforget.datamodules.manifest import ManifestError

    dm = DicomReportDataModule(task["manifest"], image_size=32, batch_size=4, num_workers=0)
    try:
        with quiet():
            dm.setup()
    except (DicomError, ManifestError) as err:
        message = str(err)
        generic = f"{task['path']}: cannot be loaded (" in message
        return {"outcome": "clear_error" if names_the_file(message, task["path"]) else "unclear",
                "generic": generic, "message": message[-600:]}
    images = [dm.subset(part)[i]["image"] for part in ("train", "val", "test") for i in range(len(dm.subset(part)))]
    finite = all(bool(np.isfinite(np.asarray(x)).all()) for x in images)
    return {"outcome": "ok" if finite else "nonfinite", "generic": False, "message": ""}


def campaign_dicom_corruptions(work: Path, hospital: Path, trials: int, seed: int) -> dict[str, Any]:
    import pandas as pd

    tally = Tally("dicom_corruptions")
    rng = random.Random(seed)
    base = pd.read_csv(hospital, dtype=str, keep_default_na=False)
    root = hospital.parent
    sources = [root / p for p in base["image_path"]]
    # the other rows: one patient in each split, so that setup has a training split whatever happens to row 1
    patients = list(dict.fromkeys(base["patient_id"]))
    rest = pd.concat([base[base["patient_id"] == p].head(1) for p in patients[1:4]])
    rest = rest.assign(split=["train", "val", "test"], image_path=[str(root / p) for p in rest["image_path"]])
    folder = work / "dicom"
    folder.mkdir(parents=True, exist_ok=True)
    before = {p: sha256(p) for p in sources}
    worker = Isolated(_dicom_trial, timeout=60)
    generic = 0
    try:
        for i in range(trials):
            src = rng.choice(sources)
            dst = folder / f"corrupt_{i:04d}.dcm"
            kind = corrupt_dicom(src, dst, rng)
            row = base[base["image_path"] == str(src.relative_to(root))].head(1)
            row = row.assign(split="train", image_path=str(dst), patient_id="FAULTY", study_id=f"S{i}")
            manifest = folder / f"manifest_{i:04d}.csv"
            pd.concat([row, rest]).to_csv(manifest, index=False)
            status, value = worker.run({"manifest": str(manifest), "path": str(dst)})
            if status == "done" and value["outcome"] in ("ok", "clear_error"):
                tally.add(value["outcome"], kind.split(":")[0])
                generic += value["generic"]
            elif status == "done":
                tally.add("crash", kind, f"{value['outcome']}: {value['message']}")
            else:
                tally.add("crash", kind, f"{status}: {value}")
            dst.unlink()
            manifest.unlink()
    finally:
        worker.close()
    lost = [str(p) for p in sources if sha256(p) != before[p]]
    tally.counts["lost"] += len(lost)
    return tally.result(decoded=tally.counts["ok"], generic_messages=generic)


# --- manifest_fuzz -------------------------------------------------------------------------------------------------
def _manifest_trial(task: dict[str, Any]) -> dict[str, Any]:
    from medforget.datamodules.dicom_report import DicomReportDataModule

    path = task["manifest"]
    dm = DicomReportDataModule(path, image_size=32, batch_size=4, num_workers=0)
    try:
        with quiet():
            dm.setup()
    except (ValueError, FileNotFoundError) as err:  # ManifestError, DicomError and our ValueErrors
        message = str(err)
        ours = type(err).__module__.startswith("medforget") or "training split is empty" in message
        located = any(w in message for w in ("row", "column", "line", "field", "encoding", "format", "table"))
        clear = ours and names_the_file(message, path) and located
        return {"outcome": "clear_error" if clear else "unclear", "message": f"{type(err).__name__}: {message}"[:800]}
    return {"outcome": "ok", "message": ""}


def _fuzz_strategy(columns: list[str], n_rows: int) -> Any:
    from hypothesis import strategies as st

    any_column = st.sampled_from([*columns, "split", "report_path", "extra"])
    weird_text = st.one_of(
        st.text(max_size=40),  # any unicode, control characters included
        st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=31), max_size=10),
        st.sampled_from(["", " ", "nan", "NaN", "None", "NULL", "-1", "2.5", "1e400", "inf", "-0", "٣", "0x1", "4",
                         "3.0", "  2 ", '"', '""', "=\"1\"", "\ufeff", "\u202e", "a\nb", "a\rb", "\x00", ",", ";"]),
        st.integers(min_value=1_000, max_value=200_000).map(lambda n: "x" * n),  # huge strings
    )
    op = st.one_of(
        st.tuples(st.just("drop_column"), any_column),
        st.tuples(st.just("add_column"), st.text(max_size=12), weird_text),
        st.tuples(st.just("set"), st.integers(0, n_rows - 1), any_column, weird_text),
        st.tuples(st.just("duplicate_row"), st.integers(0, n_rows - 1)),
        st.tuples(st.just("delete_row"), st.integers(0, n_rows - 1)),
        st.tuples(st.just("rename_column"), any_column, st.text(max_size=12)),
        st.tuples(st.just("swap_split"), st.integers(0, n_rows - 1), st.sampled_from(["train", "val", "test", "TEST",
                                                                                     "holdout", ""])),
    )
    serialise = st.fixed_dictionaries({
        "bom": st.booleans(),
        "newline": st.sampled_from(["\n", "\r\n", "\r", "mixed"]),
        "quoting": st.sampled_from(["minimal", "all", "excel_formula", "none"]),
        "sep": st.sampled_from([",", ",", ",", ";", "\t"]),
        "encoding": st.sampled_from(["utf-8"] * 8 + ["latin-1", "utf-16"]),
        "truncate": st.sampled_from([None] * 6 + [0.0, 0.01, 0.3, 0.5, 0.9, 0.99]),
        "garbage": st.one_of(st.sampled_from([None] * 6), st.binary(min_size=1, max_size=40)),
        "suffix": st.sampled_from([".csv"] * 8 + [".tsv", ".txt", ".xlsx"]),
    })
    return st.tuples(st.lists(op, min_size=1, max_size=4), serialise)


def _write_fuzzed(rows: list[dict[str, str]], columns: list[str], ops: list[tuple], fmt: dict[str, Any],
                  path_base: Path) -> Path:
    import csv

    rows = [dict(r) for r in rows]
    columns = list(columns)
    for op in ops:
        name = op[0]
        if name == "drop_column" and op[1] in columns:
            columns.remove(op[1])
        elif name == "add_column":
            columns.append(op[1])
            for r in rows:
                r[op[1]] = op[2]
        elif name == "set" and rows:
            i = min(op[1], len(rows) - 1)
            rows[i][op[2]] = op[3]
            if op[2] not in columns:
                columns.append(op[2])
        elif name == "duplicate_row" and rows:
            rows.append(dict(rows[min(op[1], len(rows) - 1)]))
        elif name == "delete_row" and rows:
            rows.pop(min(op[1], len(rows) - 1))
        elif name == "rename_column" and op[1] in columns:
            columns[columns.index(op[1])] = op[2]
            for r in rows:
                r[op[2]] = r.pop(op[1], "")
        elif name == "swap_split" and rows:
            if "split" not in columns:
                columns.append("split")
            rows[min(op[1], len(rows) - 1)]["split"] = op[2]
    buffer = io.StringIO()
    quoting = {"minimal": csv.QUOTE_MINIMAL, "all": csv.QUOTE_ALL, "excel_formula": csv.QUOTE_MINIMAL,
               "none": csv.QUOTE_NONE}[fmt["quoting"]]
    writer = csv.writer(buffer, delimiter=fmt["sep"], quoting=quoting, escapechar="\\", lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        values = [str(r.get(c, "")) for c in columns]
        if fmt["quoting"] == "excel_formula":
            values = [f'="{v}"' if v.isdigit() else v for v in values]
        writer.writerow(values)
    text = buffer.getvalue()
    if fmt["newline"] == "mixed":
        lines = text.split("\n")
        text = "".join(line + ("\r\n" if i % 2 else "\n") for i, line in enumerate(lines))
    elif fmt["newline"] != "\n":
        text = text.replace("\n", fmt["newline"])
    data = (("\ufeff" if fmt["bom"] else "") + text).encode(fmt["encoding"], errors="replace")
    if fmt["truncate"] is not None:
        data = data[: int(len(data) * fmt["truncate"])]
    if fmt["garbage"] is not None:
        at = len(data) // 2
        data = data[:at] + fmt["garbage"] + data[at:]
    path = path_base.with_suffix(fmt["suffix"])
    path.write_bytes(data)
    return path


def campaign_manifest_fuzz(work: Path, hospital: Path, trials: int, seed: int) -> dict[str, Any]:
    import pandas as pd
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    tally = Tally("manifest_fuzz")
    base = pd.read_csv(hospital, dtype=str, keep_default_na=False)
    root = hospital.parent
    base["image_path"] = [str(root / p) for p in base["image_path"]]
    rows, columns = base.to_dict("records"), list(base.columns)
    folder = work / "manifests"
    folder.mkdir(parents=True, exist_ok=True)
    worker = Isolated(_manifest_trial, timeout=60)
    before = sha256(hospital)
    counter = iter(range(10**9))

    @hypothesis_seed(seed)
    @settings(max_examples=trials, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(_fuzz_strategy(columns, len(rows)))
    def fuzz(case: tuple) -> None:
        ops, fmt = case
        path = _write_fuzzed(rows, columns, ops, fmt, folder / f"m{next(counter):04d}")
        status, value = worker.run({"manifest": str(path)})
        kinds = ",".join(sorted({op[0] for op in ops}))
        if status == "done" and value["outcome"] in ("ok", "clear_error"):
            tally.add(value["outcome"], kinds)
        else:
            tally.add("crash", kinds, f"{status}: {value if status != 'done' else value['message']} "
                                      f"[ops={ops!r:.300} fmt={fmt!r:.200}]")
        path.unlink()

    try:
        fuzz()
    finally:
        worker.close()
    if sha256(hospital) != before:
        tally.counts["lost"] += 1
    return tally.result()


# --- runs in child processes: kills and concurrent runs ------------------------------------------------------------
def launch(verb: str, args: list[str], log: Path, how: str = "fork") -> subprocess.Popen | int:
    """Start ``python -m medforget VERB ARGS`` (``how="exec"``) or a forked copy of this process running the same
    (``"fork"``: no interpreter start-up, the same code path); output to ``log``. Returns a Popen or a pid."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    if how == "exec":
        with open(log, "wb") as f:
            return subprocess.Popen([sys.executable, "-m", "medforget", verb, *args], stdout=f, stderr=f, env=env,
                                    cwd=ROOT)
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the child: never returns into the caller
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        import logging

        logging.basicConfig(stream=sys.stderr, level=logging.WARNING, force=True)
        import torch

        torch.set_num_threads(1)
        from medforget.cli import main

        main([verb, *args])
        code = 0
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
        if not isinstance(err.code, int):
            print(err.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def wait(proc: subprocess.Popen | int, timeout: float | None = None) -> int:
    """Exit code (negative: killed by that signal); ``timeout`` kills the process."""
    if isinstance(proc, subprocess.Popen):
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done, status = os.waitpid(proc, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if deadline is not None and time.monotonic() > deadline:
            os.kill(proc, signal.SIGKILL)
        time.sleep(0.02)


def kill(proc: subprocess.Popen | int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid if isinstance(proc, subprocess.Popen) else proc, signal.SIGKILL)


def _weights(path: Path) -> dict[str, Any]:
    from medforget.core.checkpoint import read_checkpoint

    return read_checkpoint(path)["state_dict"]


def model_difference(a: Path, b: Path) -> float:
    """max |a - b| / max |b| over all floating-point weights (inf when the keys or shapes differ)."""
    wa, wb = _weights(a), _weights(b)
    if wa.keys() != wb.keys():
        return float("inf")
    worst, scale = 0.0, 0.0
    for k, v in wb.items():
        if not v.is_floating_point():
            continue
        if wa[k].shape != v.shape:
            return float("inf")
        worst = max(worst, float((wa[k] - v).abs().max()) if v.numel() else 0.0)
        scale = max(scale, float(v.abs().max()) if v.numel() else 0.0)
    return worst / max(scale, 1e-12)


def exported_state(out: Path, count_leftovers: bool = True) -> tuple[bool, str]:
    """Is ``out/model.ckpt`` (if present) complete: loadable and equal to its sidecar? Any temporary file left
    (``count_leftovers``; right after a SIGKILL during an atomic write its temporary file necessarily remains, and the
    next run in the folder removes it)?"""
    from medforget.core.checkpoint import CheckpointError, read_sidecar, sha256_file
    from medforget.systems.classifier import load_classifier

    problems = []
    ckpt = out / "model.ckpt"
    if ckpt.exists():
        try:
            load_classifier(ckpt)
        except CheckpointError as err:
            problems.append(f"partial model.ckpt: {err}")
        side = read_sidecar(ckpt) if ckpt.is_file() else None
        if side is not None and side != sha256_file(ckpt):
            problems.append("model.ckpt does not match its sidecar")
    left = [p for p in leftovers(out) if not p.startswith("checkpoints")] if count_leftovers else []
    if left:
        problems.append(f"temporary files left: {left}")
    return not problems, "; ".join(problems)


class KillSetup:
    """The inputs of the kill and concurrency campaigns: hospital, forget request, original checkpoint, recipes."""

    def __init__(self, work: Path, hospital: Path, epochs: int) -> None:
        work.mkdir(parents=True, exist_ok=True)
        from medforget import api
        from medforget.datamodules.dicom_report import DicomReportDataModule
        from medforget.datamodules.splits import sample_forget_request, write_patient_ids

        self.hospital = hospital
        dm = DicomReportDataModule(str(hospital), image_size=32, cache_rate=0.0)
        with quiet():
            dm.setup()
        self.forget = write_patient_ids(
            sample_forget_request(dm.df.loc[dm.indices["train"], "patient_id"], 0.2, seed=0), work / "forget.txt")
        self.data = [f"--data.manifest={hospital}", *TINY_DATA]
        self.train_args = [*self.data, *TINY_MODEL, f"--trainer.max_epochs={epochs}", *QUIET]
        with quiet():
            self.original = api.train(hospital, work / "original", epochs=1, data=TINY_DATA_ARGS,
                                      model=TINY_MODEL_ARGS, trainer=QUIET_TRAINER)
        # a tiny request (the selection split needs 3+ forget patients): selection on the retain sample and val only
        self.unlearn_args = ["--method=FineTune", f"--ckpt={self.original}", f"--forget={self.forget}", *self.data,
                             "--data.selection_fraction=0", f"--trainer.max_epochs={epochs}",
                             "--model.init_args.lr=0.01", *QUIET]
        self.inputs = [hospital, self.forget, self.original]
        self.digests = {p: sha256(p) for p in self.inputs}

    def args(self, verb: str) -> list[str]:
        return self.train_args if verb == "train" else self.unlearn_args

    def changed_inputs(self) -> list[str]:
        return [str(p) for p in self.inputs if sha256(p) != self.digests[p]]


def campaign_kills(work: Path, setup: KillSetup, trials: int, seed: int, how: str) -> dict[str, Any]:
    tally = Tally("kills")
    rng = random.Random(seed)
    reference, seconds, tolerance = {}, {}, {}
    for verb in ("train", "unlearn"):
        for seed_everything in (0, 1) if verb == "train" else (0,):
            out = work / f"reference_{verb}_{seed_everything}"
            log = work / f"reference_{verb}_{seed_everything}.log"
            start = time.perf_counter()
            code = wait(launch(verb, [*setup.args(verb), f"--seed_everything={seed_everything}", f"--out={out}"],
                               log, how), 900)
            seconds[verb] = time.perf_counter() - start
            if code != 0:
                raise RuntimeError(f"the uninterrupted {verb} failed:\n{log.read_text()[-3000:]}")
        reference[verb] = work / f"reference_{verb}_0" / "model.ckpt"
        other = work / "reference_train_1" / "model.ckpt" if verb == "train" else setup.original
        tolerance[verb] = KILL_TOLERANCE * model_difference(other, reference[verb])
    exact, worst = 0, dict.fromkeys(reference, 0.0)
    resumed_from_last = 0
    for i in range(trials):
        verb = ("train", "unlearn")[i % 2]
        out = work / f"kill_{i:03d}"
        args = [*setup.args(verb), f"--out={out}"]
        at = rng.uniform(0.05, 1.0) * seconds[verb]
        proc = launch(verb, args, work / f"kill_{i:03d}.log", how)
        time.sleep(at)
        kill(proc)
        code = wait(proc, 60)
        complete, problem = exported_state(out, count_leftovers=False)  # the resumed run must remove them (below)
        resumed = (out / "checkpoints" / "last.ckpt").exists()
        resumed_from_last += resumed
        log = work / f"resume_{i:03d}.log"
        code2 = wait(launch(verb, [*args, "--ckpt_path=last", "--overwrite=true"], log, how), 900)
        complete2, problem2 = exported_state(out)
        detail = f"{verb} killed after {at:.1f} s (exit {code}); "
        changed = setup.changed_inputs()
        if code2 != 0:
            tally.add("crash", verb, detail + f"resume exit {code2}: {log.read_text()[-1200:]}", lost=True,
                      partial=not (complete and complete2))
            continue
        diff = model_difference(out / "model.ckpt", reference[verb])
        exact += diff == 0.0
        worst[verb] = max(worst[verb], diff)
        lost = diff > tolerance[verb] or bool(changed)
        tally.add("ok", verb, detail + f"{problem} {problem2} difference {diff:.2e}, changed inputs {changed}",
                  lost=lost, partial=not (complete and complete2))
        shutil.rmtree(out, ignore_errors=True)
    return tally.result(launcher=how, resumed_from_last_ckpt=resumed_from_last, bit_equal_to_uninterrupted=exact,
                        max_difference={k: float(f"{v:.3g}") for k, v in worst.items()},
                        tolerance={k: float(f"{v:.3g}") for k, v in tolerance.items()},
                        uninterrupted_seconds={k: round(v, 1) for k, v in seconds.items()})


def campaign_concurrent_out(work: Path, setup: KillSetup, trials: int, how: str) -> dict[str, Any]:
    """A long ``unlearn`` holds ``--out``; a second one into it must be refused at once naming the lock. The first is
    then SIGKILLed, which leaves its lock file behind: a third run must take the stale lock over (with a warning) and
    complete."""
    from medforget.core.runlock import LOCK_NAME

    tally = Tally("concurrent_out")
    refusal_seconds = []
    for i in range(trials):
        out = work / f"concurrent_{i:03d}"
        args = [*setup.unlearn_args, f"--out={out}"]
        first = launch("unlearn", [*args, "--trainer.max_epochs=100000"], work / f"first_{i}.log", how)
        deadline = time.monotonic() + 300
        while not (out / LOCK_NAME).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        start = time.perf_counter()
        second = launch("unlearn", [*args, "--overwrite=true"], work / f"second_{i}.log", how)
        code2 = wait(second, 300)
        refusal_seconds.append(time.perf_counter() - start)
        first_alive = _alive(first)
        kill(first)
        wait(first, 60)
        message = (work / f"second_{i}.log").read_text()
        complete, problem = exported_state(out)
        if code2 != 0 and str(out / LOCK_NAME) in message and "in use by another medforget run" in message:
            tally.add("clear_error", "second run", partial=not complete, detail=problem)
        else:
            tally.add("crash", "second run", f"second exit {code2} (first still running: {first_alive}): "
                                             f"{message[-800:]}", partial=not complete)
        # the first run's lock file is still there (SIGKILL): the next run takes the stale lock over with a warning
        stale = (out / LOCK_NAME).exists()
        code3 = wait(launch("unlearn", [*args, "--overwrite=true"], work / f"third_{i}.log", how), 900)
        third = (work / f"third_{i}.log").read_text()
        complete, problem = exported_state(out)
        if code3 == 0 and stale and "taking over the stale lock" in third and not (out / LOCK_NAME).exists():
            tally.add("ok", "stale lock", partial=not complete, detail=problem)
        else:
            tally.add("crash", "stale lock", f"exit {code3}, lock left by the killed run: {stale}: {third[-800:]}",
                      lost=code3 != 0, partial=not complete)
        shutil.rmtree(out, ignore_errors=True)
    changed = setup.changed_inputs()
    tally.counts["lost"] += len(changed)
    return tally.result(launcher=how, refusal_seconds_max=round(max(refusal_seconds, default=0.0), 2))


def _alive(proc: subprocess.Popen | int) -> bool:
    if isinstance(proc, subprocess.Popen):
        return proc.poll() is None
    return os.waitpid(proc, os.WNOHANG)[0] == 0


# --- disk_full -----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def tiny_filesystem(work: Path, size_kb: int) -> Iterator[tuple[Path, str]]:
    """A tmpfs of ``size_kb`` (root), else a folder where ``torch.save`` / text writes raise ENOSPC once the budget
    is spent (monkeypatched)."""
    mount = work / f"tmpfs_{size_kb}"
    mount.mkdir(parents=True, exist_ok=True)
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mount)],
                                 capture_output=True).returncode == 0
    if mounted:
        try:
            yield mount, "tmpfs"
        finally:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        return
    with _enospc_after(mount, size_kb * 1024):
        yield mount, "monkeypatched ENOSPC"


@contextlib.contextmanager
def _enospc_after(folder: Path, budget: int) -> Iterator[None]:
    """Writes of files under ``folder`` through Python's ``open``/``os.fdopen`` and ``torch.save`` fail with ENOSPC
    once ``budget`` bytes are written (the partial bytes stay, as on a full disk)."""
    import builtins

    import torch

    used = {"bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())}
    real_open, real_fdopen, real_save = builtins.open, os.fdopen, torch.save

    class Limited(io.RawIOBase):
        def __init__(self, f: Any) -> None:
            self.f = f

        def write(self, b: Any) -> int:
            room = budget - used["bytes"]
            data = bytes(b) if not isinstance(b, str) else b.encode()
            if len(data) > room:
                self.f.write(data[:max(room, 0)] if isinstance(b, bytes) else b[:max(room, 0)])
                used["bytes"] = budget
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            used["bytes"] += len(data)
            return self.f.write(b)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

        def __enter__(self) -> Limited:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    def inside(path: Any) -> bool:
        return isinstance(path, (str, Path)) and str(Path(path).resolve()).startswith(str(folder.resolve()))

    def limited_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(file, mode, *args, **kwargs)
        return Limited(f) if inside(file) and any(m in mode for m in "wax+") else f

    def limited_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if not inside(f):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        with limited_open(f, "wb") as out:
            out.write(buffer.getvalue())

    builtins.open, torch.save = limited_open, limited_save
    os.fdopen = lambda fd, mode="r", *a, **k: (Limited(real_fdopen(fd, mode, *a, **k))
                                               if any(m in mode for m in "wax+") else real_fdopen(fd, mode, *a, **k))
    try:
        yield
    finally:
        builtins.open, os.fdopen, torch.save = real_open, real_fdopen, real_save


def campaign_disk_full(work: Path, setup: KillSetup, trials: int, seed: int) -> dict[str, Any]:
    from medforget.core.checkpoint import read_sidecar, sha256_file, write_sidecar
    from medforget.core.io import write_json
    from medforget.systems.classifier import load_classifier

    tally = Tally("disk_full")
    rng = random.Random(seed)
    model = load_classifier(setup.original)
    size = (setup.original.stat().st_size // 1024) + 64
    report = {"schema_version": 2, "models": {"original": {"checkpoint": str(setup.original),
                                                           "checkpoint_sha256": sha256_file(setup.original)}},
              "padding": ["x" * 1000] * rng.randint(1, 50)}
    filesystem = ""
    for i in range(trials):
        what = ("export", "audit")[i % 2]
        free_kb = rng.choice([4, 8, 16, rng.randint(4, size), rng.randint(4, size)]) if what == "export" else \
            rng.choice([4, 8, 12, 24, 64])
        with tiny_filesystem(work, free_kb) as (folder, kind):
            filesystem = kind
            before = sorted(p.name for p in folder.iterdir())
            target = folder / ("model.ckpt" if what == "export" else "audit.json")
            try:
                if what == "export":
                    from medforget.systems.classifier import export_classifier

                    export_classifier(model, target, provenance={"kind": "disk_full"})
                else:
                    write_json(report, target)
                    write_sidecar(target)
            except OSError as err:
                message = f"{type(err).__name__}: {err}"
                outcome = "clear_error" if (err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
                                            and str(folder) in message) else "crash"
                extra = sorted(set(p.name for p in folder.iterdir()) - set(before))
                partial = bool(extra) and not (read_sidecar_ok(target, read_sidecar, sha256_file))
                tally.add(outcome, what, f"{message}; left: {extra}", partial=partial)
            except Exception as err:  # noqa: BLE001 - anything but an OSError naming the file is a crash
                extra = sorted(set(p.name for p in folder.iterdir()) - set(before))
                tally.add("crash", what, f"{type(err).__name__}: {err}; left: {extra}", partial=bool(extra))
            else:
                extra = sorted(set(p.name for p in folder.iterdir()) - set(before))
                complete = read_sidecar_ok(target, read_sidecar, sha256_file) and not leftovers(folder)
                tally.add("ok", what, f"left: {extra}", partial=not complete)
    changed = setup.changed_inputs()
    tally.counts["lost"] += len(changed)
    return tally.result(filesystem=filesystem)


def read_sidecar_ok(target: Path, read_sidecar: Callable, sha256_file: Callable) -> bool:
    """A complete output: the file and its sidecar, matching; nothing else of it (no temporary file)."""
    try:
        return target.is_file() and read_sidecar(target) == sha256_file(target) and not leftovers(target.parent)
    except Exception:  # noqa: BLE001
        return False


# --- tampered_checkpoints ------------------------------------------------------------------------------------------
class Payload:
    """Unpickling this runs ``touch SENTINEL``."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.sentinel}",))


def _entry_points(setup: KillSetup, work: Path) -> dict[str, Callable[[Path], Any]]:
    """Every way a user hands medforget a checkpoint."""
    from medforget.cli import main
    from medforget.systems.classifier import load_classifier

    def cli(verb: str, *args: str) -> Callable[[Path], Any]:
        def run(path: Path) -> Any:
            out = Path(tempfile.mkdtemp(prefix=f"{verb}_", dir=work))
            with quiet():
                main([verb, *[a.format(path=path, out=out) for a in args]])
        return run

    return {
        "load_classifier": load_classifier,
        "unlearn --ckpt": cli("unlearn", "--method=FineTune", "--ckpt={path}", f"--forget={setup.forget}",
                              *setup.data, "--trainer.max_epochs=1", *QUIET, "--out={out}"),
        "evaluate --original": cli("evaluate", "--original={path}", f"--forget={setup.forget}", *setup.data,
                                   "--out={out}", "--accelerator=cpu", "--audit.quantization=[]",
                                   "--audit.relearn_steps=0", "--audit.plots=false", "--audit.bootstrap=0"),
        "train --ckpt_path": cli("train", *setup.train_args, "--trainer.max_epochs=2", "--ckpt_path={path}",
                                 "--out={out}"),
    }


def campaign_tampered_checkpoints(work: Path, setup: KillSetup, seed: int, quick: bool) -> dict[str, Any]:
    import torch

    from medforget.core.checkpoint import CheckpointError, read_checkpoint

    tally = Tally("tampered_checkpoints")
    rng = random.Random(seed)
    folder = work / "tampered"
    folder.mkdir(parents=True, exist_ok=True)
    sentinel = folder / "PWNED"
    original = read_checkpoint(setup.original)
    resume = read_checkpoint(next((setup.original.parent / "checkpoints").glob("latest-*.ckpt")))
    cases: list[tuple[str, Path]] = []
    # 1. a pickle that executes code when loaded without weights_only (as the top object and inside a checkpoint)
    for where, obj in (("payload (top level)", Payload(sentinel)),
                       ("payload (in state_dict)", {**original, "state_dict": {**original["state_dict"],
                                                                               "evil": Payload(sentinel)}}),
                       ("payload (in a resume checkpoint)", {**resume, "evil": Payload(sentinel)})):
        path = folder / f"{where.split()[0]}_{len(cases)}.ckpt"
        torch.save(obj, path)
        cases.append((where, path))
    # 2. truncated at random offsets
    data = setup.original.read_bytes()
    for k in range(2 if quick else 6):
        path = folder / f"truncated_{k}.ckpt"
        path.write_bytes(data[: rng.randrange(len(data))])
        cases.append(("truncated", path))
    # 3. a tensor of another shape (classifier and resume checkpoints)
    name = rng.choice([k for k, v in original["state_dict"].items() if v.ndim >= 1])
    for kind, ckpt in (("changed shape", original), ("changed shape (resume checkpoint)", resume)):
        state = {**ckpt["state_dict"], name: torch.zeros(*[s + 1 for s in ckpt["state_dict"][name].shape])}
        path = folder / f"shape_{len(cases)}.ckpt"
        torch.save({**ckpt, "state_dict": state}, path)
        cases.append((kind, path))
    entry_points = _entry_points(setup, work)
    if quick:
        entry_points = {k: entry_points[k] for k in ("load_classifier", "train --ckpt_path")}
    for kind, path in cases:
        for entry, load in entry_points.items():
            sentinel.unlink(missing_ok=True)
            digest = sha256(path)
            try:
                load(path)
            except (CheckpointError, SystemExit) as err:
                message = str(err.code if isinstance(err, SystemExit) else err)
                executed = sentinel.exists()
                outcome = "clear_error" if str(path) in message and not executed else "crash"
                tally.add(outcome, kind, f"{entry}: {message[-600:]}; code executed: {executed}")
            except BaseException as err:  # noqa: BLE001
                tally.add("crash", kind, f"{entry}: {type(err).__name__}: {str(err)[-600:]}; code executed: "
                                         f"{sentinel.exists()}")
            else:
                tally.add("crash", kind, f"{entry}: accepted the tampered checkpoint; code executed: "
                                         f"{sentinel.exists()}")
            if sha256(path) != digest:
                tally.counts["lost"] += 1
    changed = setup.changed_inputs()
    tally.counts["lost"] += len(changed)
    return tally.result(code_executed=sentinel.exists(), entry_points=list(entry_points))


# --- main ----------------------------------------------------------------------------------------------------------
CAMPAIGNS = tuple(TRIALS)


def run_campaigns(campaigns: tuple[str, ...] | list[str] = CAMPAIGNS, quick: bool = False, seed: int = 0,
                  work: Path | None = None, out: Path | None = RESULTS, launcher: str | None = None,
                  trials: dict[str, int] | None = None) -> dict[str, Any]:
    """Run the campaigns; return (and write to ``out``) the results."""
    unknown = set(campaigns) - set(CAMPAIGNS)
    if unknown:
        raise ValueError(f"unknown campaign(s) {sorted(unknown)}; choose from {CAMPAIGNS}")
    n = {k: (trials or {}).get(k, v[1] if quick else v[0]) for k, v in TRIALS.items()}
    how = launcher or ("fork" if quick else "exec")
    owned = work is None
    work = Path(tempfile.mkdtemp(prefix="medforget-faults-")) if work is None else Path(work)
    results: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        import medforget.cli  # noqa: F401  (imported once here, not in every forked worker)

        hospital = make_hospital(work, num_patients=8 if quick else 12)
        setup = None
        if {"kills", "concurrent_out", "disk_full", "tampered_checkpoints"} & set(campaigns):
            setup = KillSetup(work, hospital, epochs=2 if quick else 3)
        for name in campaigns:
            print(f"campaign {name} ...", flush=True)
            folder = work / name
            folder.mkdir(exist_ok=True)
            if name == "dicom_corruptions":
                results[name] = campaign_dicom_corruptions(folder, hospital, n[name], seed)
            elif name == "manifest_fuzz":
                results[name] = campaign_manifest_fuzz(folder, hospital, n[name], seed)
            elif name == "kills":
                results[name] = campaign_kills(folder, setup, n[name], seed, how)
            elif name == "disk_full":
                results[name] = campaign_disk_full(folder, setup, n[name], seed)
            elif name == "concurrent_out":
                results[name] = campaign_concurrent_out(folder, setup, n[name], how)
            else:
                results[name] = campaign_tampered_checkpoints(folder, setup, seed, quick)
            r = results[name]
            print(f"  {name}: " + ", ".join(f"{k} {r[k]}" for k in COUNTS) + f" ({r['seconds']} s)", flush=True)
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)
    import medforget

    report = {"command": "python benchmarks/faults.py" + (" --quick" if quick else ""), "seed": seed, "quick": quick,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "medforget_version": medforget.__version__,
              "cpu_count": os.cpu_count(), "seconds": round(time.perf_counter() - start, 1),
              "targets": "crash = lost = partial = 0", "campaigns": results}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def summary_table(report: dict[str, Any]) -> str:
    """The figures of ``faults.json`` as a Markdown table (README / RESULTS.md)."""
    rows = ["| campaign | trials | clear_error | ok | crash | lost | partial |", "|---|---|---|---|---|---|---|"]
    for name, r in report["campaigns"].items():
        rows.append(f"| {name} | " + " | ".join(str(r[k]) for k in COUNTS) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few trials of each campaign (the test suite's)")
    parser.add_argument("--campaigns", nargs="+", default=list(CAMPAIGNS), choices=CAMPAIGNS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    parser.add_argument("--launcher", choices=("exec", "fork"), default=None,
                        help="how train/unlearn runs are started: python -m medforget (exec; default of the full "
                             "campaign) or a forked copy of this process (fork; --quick)")
    parser.add_argument("--work", type=Path, default=None, help="keep the work files here (default: a temp dir)")
    args = parser.parse_args(argv)
    report = run_campaigns(args.campaigns, args.quick, args.seed, args.work, args.out, args.launcher)
    bad = {name: {k: r[k] for k in ("crash", "lost", "partial") if r[k]} for name, r in report["campaigns"].items()}
    bad = {k: v for k, v in bad.items() if v}
    print(summary_table(report))
    print(f"wrote {args.out}" + (f"; NOT MET: {bad}" if bad else "; crash = lost = partial = 0 everywhere"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
