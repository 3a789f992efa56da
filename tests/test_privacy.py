"""No patient identifier and no report text reaches a log, a console line or a report: a full train -> retrain ->
unlearn -> evaluate run on a hospital with a planted identifier and a planted report sentence, then everything the run
wrote or printed is searched for them."""

from __future__ import annotations

import pandas as pd

from medforget.commands import evaluate, train, unlearn
from medforget.datamodules.dicom_report import DicomReportDataModule
from tests.conftest import TINY_DATA, TINY_MODEL

PLANTED_ID = "PLANTED-7731-XQ"
PLANTED_TEXT = "Zyxwvut quokkaplanted remark"
QUIET = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]


def test_no_identifier_or_report_text_in_logs_or_reports(tiny_hospital, tmp_path, capfd):
    source = pd.read_csv(tiny_hospital)
    source["image_path"] = [str((tiny_hospital.parent / p).resolve()) for p in source["image_path"]]
    manifest = tmp_path / "manifest.csv"
    for target in sorted(set(source["patient_id"])):  # the split depends on the IDs: plant until it is a train patient
        df = source.copy()
        rows = df["patient_id"] == target
        df.loc[rows, "patient_id"] = PLANTED_ID
        df.loc[rows, "report"] = df.loc[rows, "report"] + f" {PLANTED_TEXT}."
        df.to_csv(manifest, index=False)
        dm = DicomReportDataModule(str(manifest), image_size=32, seed=0, cache_rate=0.0)
        dm.setup()
        train_patients = set(dm.df.loc[dm.indices["train"], "patient_id"])
        if PLANTED_ID in train_patients:
            break
    other = sorted(train_patients - {PLANTED_ID})[0]
    forget = tmp_path / "forget.txt"
    forget.write_text(f"{PLANTED_ID}\n{other}\n")

    out = tmp_path / "runs"
    data = [f"--data.manifest={manifest}", *TINY_DATA]
    original = train([*data, *TINY_MODEL, "--trainer.max_epochs=1", *QUIET, f"--out={out / 'original'}"])
    retrained = train([*data, *TINY_MODEL, "--trainer.max_epochs=1", *QUIET, f"--out={out / 'retrained'}",
                       f"--data.exclude_patients={forget}"])
    unlearned = unlearn(["--method=FineTune", f"--ckpt={original}", f"--forget={forget}", *data,
                         "--data.selection_fraction=0",
                         "--trainer.max_epochs=1", *QUIET, f"--out={out / 'unlearned'}"])
    evaluate([f"--original={original}", f"--unlearned={unlearned}", f"--retrained={retrained}", f"--forget={forget}",
              *data, f"--out={out / 'audit'}", "--accelerator=cpu", "--audit.relearn_steps=1",
              "--audit.quantization=[int4]"])
    printed = capfd.readouterr()

    for stream in (printed.out, printed.err):
        assert PLANTED_ID not in stream and other not in stream
        assert PLANTED_TEXT not in stream
    files = [p for p in out.rglob("*") if p.is_file() and "private" not in p.parts]
    texts = [p for p in files if p.suffix in (".json", ".md", ".html", ".txt", ".yaml", ".csv", ".log")]
    assert {p.name for p in texts} >= {"config.yaml", "hparams.yaml", "metrics.csv", "audit.json", "audit.md",
                                       "audit.html"}
    for path in texts:
        content = path.read_text(errors="ignore")
        assert PLANTED_ID not in content and other not in content, path
        assert PLANTED_TEXT not in content, path
    for path in files:  # checkpoints too (binary): no identifier
        assert PLANTED_ID.encode() not in path.read_bytes(), path
