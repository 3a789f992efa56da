"""The notebooks in ``notebooks/`` run end to end (nbclient) on tiny data, and their outputs hold no PHI.

Each notebook reads its parameters from ``MEDFORGET_NB_*`` environment variables (its first, ``parameters``-tagged
cell); the kernel inherits them from this process. The kernel is this interpreter (a kernelspec written to a temp
dir on ``JUPYTER_PATH``), so it imports the medforget under test whatever other ``python3`` kernels are installed.
Runtime: about a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("01_data.ipynb", "02_train_unlearn_audit.ipynb", "03_mia.ipynb", "04_llm.ipynb")
KERNEL = "medforget-test"
TINY = {
    "MEDFORGET_NB_PATIENTS": "32",
    "MEDFORGET_NB_IMAGE_SIZE": "32",
    "MEDFORGET_NB_EPOCHS": "2",
    "MEDFORGET_NB_SEED": "0",
    "MEDFORGET_NB_FORGET_FRACTION": "0.15",
    "MEDFORGET_NB_UNLEARN_EPOCHS": "1",
    "MEDFORGET_NB_RELEARN_STEPS": "2",
    "MEDFORGET_NB_QUANTIZATION": "int8",
    "MEDFORGET_NB_REFERENCE_MODELS": "2",
    "MEDFORGET_NB_TINY": "1",
    "MEDFORGET_NB_REUSE": "1",
    "MEDFORGET_NB_ACCELERATOR": "cpu",
}


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernelspec for this interpreter on ``JUPYTER_PATH``; the environment the kernels inherit."""
    root = tmp_path_factory.mktemp("jupyter")
    kernelspec.write_kernel_spec(root / "kernels" / KERNEL)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root))
        mp.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        # one intra-op thread: the tiny models gain nothing from more, and OpenMP threads spinning against another
        # busy process (a parallel test worker, a benchmark) made these runs several times slower
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("MKL_NUM_THREADS", "1")
        yield mp


def execute(name: str, workdir: Path, mp: pytest.MonkeyPatch, **env: str) -> nbformat.NotebookNode:
    """Run a notebook in ``workdir`` (its cwd) on tiny data (:data:`TINY` updated with ``env``), writing under
    ``workdir``; a failing cell raises ``CellExecutionError`` with the cell's traceback."""
    for key, value in {**TINY, "MEDFORGET_NB_OUT": str(workdir), **env}.items():
        mp.setenv(key, value)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return nb


def output_text(nb: nbformat.NotebookNode) -> str:
    """Every text the notebook showed: streams, errors, plain / HTML / Markdown results."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type == "error":
                parts.append("\n".join(out.traceback))
            else:
                data = out.get("data", {})
                parts += [data[k] for k in ("text/plain", "text/html", "text/markdown") if k in data]
    return "\n".join(parts)


def images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def assert_no_phi(nb: nbformat.NotebookNode, manifest: Path) -> None:
    """No patient ID, study ID or report of the hospital appears in any output."""
    text = output_text(nb)
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    leaked = [p for p in set(df["patient_id"]) | set(df["study_id"]) if p in text]
    assert not leaked, f"{len(leaked)} patient/study IDs in the outputs"
    sentences = {s.strip() + "." for report in df["report"] for s in report.split(".") if len(s.strip()) > 20}
    shown = [s for s in sentences if s in text]
    assert not shown, f"{len(shown)} report sentences in the outputs"


def test_notebooks_are_committed_clean():
    """Committed without outputs; the first code cell is the ``parameters`` cell read from the environment."""
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"
        assert "parameters" in code[0].metadata.get("tags", []), name
        assert "MEDFORGET_NB_OUT" in code[0].source, name


def test_data_notebook(kernel, tmp_path):
    nb = execute("01_data.ipynb", tmp_path, kernel)
    work = tmp_path / "01_data"
    manifest = work / "hospital" / "manifest.csv"
    assert manifest.is_file() and (work / "forget.txt").is_file()
    text = output_text(nb)
    for field in ("PhotometricInterpretation", "Modality", "TransferSyntax", "Explicit VR Little Endian",
                  "split fingerprint", "ForgetRequestError", "retain"):
        assert field in text, field
    assert images(nb) >= 2  # studies per patient, the DICOM grid
    assert_no_phi(nb, manifest)


@pytest.fixture(scope="module")
def flow(kernel, tmp_path_factory):
    """Notebook 02, then notebook 03 in the same working directory (it reuses 02's models)."""
    workdir = tmp_path_factory.mktemp("notebooks")
    return workdir, execute("02_train_unlearn_audit.ipynb", workdir, kernel), execute("03_mia.ipynb", workdir, kernel)


def test_train_unlearn_audit_notebook(flow):
    workdir, nb, _ = flow
    audit = workdir / "02_train_unlearn_audit" / "audit"
    report = json.loads((audit / "audit.json").read_text())
    assert report["verdict"] in ("pass", "inconclusive", "fail", "n/a")
    criteria = {c["criterion"] for c in report["criteria"]}
    assert {"forget_accuracy", "test_auc_drop", "quantization/int8", "relearning", "mia/LossAttack"} <= criteria
    assert (audit / "audit.md").is_file() and (audit / "audit.html").is_file()
    pngs = sorted(p.name for p in (audit / "plots").glob("*.png"))
    assert {"roc.png", "relearning.png"} <= set(pngs)
    assert images(nb) == len(pngs)  # every plot displayed
    text = output_text(nb)
    assert f"verdict: {report['verdict'].upper()}" in text
    assert all(c in text for c in criteria)  # the criteria table
    assert_no_phi(nb, workdir / "02_train_unlearn_audit" / "hospital" / "manifest.csv")


def test_mia_notebook(flow):
    from medforget.audit.classifier.mia import MembershipAttack

    workdir, _, nb = flow
    text = output_text(nb)
    assert "reusing the models of" in text
    mia = json.loads((workdir / "03_mia" / "mia.json").read_text())
    every = sorted(MembershipAttack.registry)
    assert mia["attacks"] == every  # LiRA and RMIA included (2 reference models)
    for model in ("original", "unlearned", "retrained"):
        assert sorted(mia["mia"][model]) == every
        assert all(0.0 <= m["auc"] <= 1.0 for m in mia["mia"][model].values())
    assert all(attack in text for attack in every)  # the AUC / TPR@1%FPR table
    assert "TPR@1%FPR" in text
    assert images(nb) >= 2  # ROC curves, score histograms
    assert len(list((workdir / "03_mia" / "reference_models").glob("*/model_1.ckpt"))) == 1
    assert_no_phi(nb, workdir / "02_train_unlearn_audit" / "hospital" / "manifest.csv")


def test_mia_notebook_standalone(kernel, tmp_path):
    """Without a run of notebook 02, notebook 03 trains its models itself (here: no reference models, no LiRA/RMIA)."""
    from medforget.audit.classifier.config import default_attacks

    nb = execute("03_mia.ipynb", tmp_path, kernel, MEDFORGET_NB_REFERENCE_MODELS="0")
    assert "training the models here" in output_text(nb)
    mia = json.loads((tmp_path / "03_mia" / "mia.json").read_text())
    assert mia["attacks"] == default_attacks()
    assert {"original", "unlearned", "retrained"} == set(mia["mia"])
    assert_no_phi(nb, tmp_path / "03_mia" / "hospital" / "manifest.csv")


def test_llm_notebook(kernel, tmp_path):
    """Notebook 04 on a 30-patient corpus and a tiny model: the LM audit is written and shown, and no name, MRN, date
    of birth or note of the corpus appears in any output."""
    from medforget.datamodules.notes import generate_corpus

    nb = execute("04_llm.ipynb", tmp_path, kernel, MEDFORGET_NB_LM_PATIENTS="30", MEDFORGET_NB_LM_EPOCHS="6")
    audit = tmp_path / "04_llm" / "audit"
    report = json.loads((audit / "lm_audit.json").read_text())
    assert report["verdict"] in ("pass", "inconclusive", "fail", "n/a")
    assert (audit / "lm_audit.md").is_file() and (audit / "lm_audit.html").is_file()
    text = output_text(nb)
    assert "<name>" in text and "<mrn>" in text  # the masked example
    assert all(c["criterion"] in text for c in report["criteria"])
    assert images(nb) == len(list((audit / "plots").glob("*.png"))) >= 3
    records = generate_corpus(30, seed=0)
    for r in records:
        for value in (r.name, r.mrn, r.dob, *r.notes):
            assert value not in text, "an identifier or a note is in the notebook's outputs"
