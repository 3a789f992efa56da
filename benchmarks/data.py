"""Data-path benchmark (issue 7): images/s of DICOM decoding + transforms, first pass vs cached epochs.

Three set-ups of :class:`~medforget.datamodules.dicom_report.DicomReportDataModule` on the synthetic hospital:

- no cache (``cache_rate=0``): every epoch reads and decodes every DICOM file;
- in-memory cache (MONAI ``CacheDataset``, the default): setup decodes each image once, epochs read memory;
- disk cache (MONAI ``PersistentDataset``, ``cache_dir``): the first run's setup decodes and writes the cache, a
  later run's setup and epochs only read it.

    python benchmarks/data.py                                # 300 patients at 64 px and at 256 px
    python benchmarks/data.py --image-size 512 --num-workers 2

Prints a table of images/s per phase (train split, batch 32).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medforget.datamodules.dicom_report import DicomReportDataModule  # noqa: E402
from medforget.datamodules.synthetic import SyntheticConfig, generate_hospital  # noqa: E402


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def epoch(dm: DicomReportDataModule) -> int:
    return sum(len(batch["label"]) for batch in dm.train_dataloader())


def measure(manifest: Path, image_size: int, num_workers: int, root: Path) -> list[tuple[str, float]]:
    kwargs = {"image_size": image_size, "num_workers": num_workers, "batch_size": 32}
    rows: list[tuple[str, float]] = []

    dm = DicomReportDataModule(str(manifest), cache_rate=0.0, **kwargs)
    dm.setup()  # (this setup also decodes every image once, to reject unreadable files up front)
    seconds, n = timed(lambda: epoch(dm))
    rows.append(("no cache: every epoch decodes", n / seconds))

    dm = DicomReportDataModule(str(manifest), cache_rate=1.0, **kwargs)
    seconds, _ = timed(dm.setup)
    rows.append(("memory cache: setup (decode + fill)", len(dm._position) / seconds))
    epoch(dm)
    seconds, n = timed(lambda: epoch(dm))
    rows.append(("memory cache: cached epoch", n / seconds))

    cache = root / f"cache{image_size}"
    dm = DicomReportDataModule(str(manifest), cache_dir=str(cache), **kwargs)
    seconds, _ = timed(dm.setup)
    rows.append(("disk cache: first run setup (decode + write)", len(dm._position) / seconds))
    dm = DicomReportDataModule(str(manifest), cache_dir=str(cache), **kwargs)
    seconds, _ = timed(dm.setup)
    rows.append(("disk cache: later run setup (cache check)", len(dm._position) / seconds))
    seconds, n = timed(lambda: epoch(dm))
    rows.append(("disk cache: cached epoch", n / seconds))
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-patients", type=int, default=300)
    parser.add_argument("--image-size", type=int, nargs="+", default=[64, 256],
                        help="stored and loaded image side(s) in pixels")
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args(argv)

    lines = ["| phase | " + " | ".join(f"images/s at {s} px" for s in args.image_size) + " |",
             "|---|" + "---|" * len(args.image_size)]
    results = {}
    with tempfile.TemporaryDirectory(prefix="medforget-data-bench-") as tmp:
        for size in args.image_size:
            manifest = generate_hospital(Path(tmp) / f"h{size}", SyntheticConfig(
                num_patients=args.num_patients, image_size=size, seed=0), overwrite=True)
            results[size] = measure(manifest, size, args.num_workers, Path(tmp))
    for i, (phase, _) in enumerate(results[args.image_size[0]]):
        lines.append(f"| {phase} | " + " | ".join(f"{results[s][i][1]:,.0f}" for s in args.image_size) + " |")
    table = "\n".join(lines) + (f"\n\n{args.num_patients} patients, train split, batch 32, "
                                f"{args.num_workers} DataLoader workers\n")
    print(table)
    return table


if __name__ == "__main__":
    main()
