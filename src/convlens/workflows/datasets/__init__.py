"""Whole data sets: resumable explanation runs over folders, lists and tars of pictures, on one
machine or a Ray cluster, with a report (``cl.dataset``; CLI ``convlens dataset``).

>>> import convlens as cl
>>> run = cl.dataset.explain("mobilenet_v2", "val/", "gradcam", out="runs/val")  # doctest: +SKIP
>>> df = run.table()  # pandas: one row per picture x method  # doctest: +SKIP
>>> run.maps("gradcam")["n01440764/ILSVRC2012_val_00000293.JPEG"]  # doctest: +SKIP

The parts, bottom up: :mod:`.inputs` (sources -> items -> loaded pictures), :mod:`.work` (what
one batch computes), :mod:`.engines` and :mod:`.ray_engine` (where it runs), :mod:`.store`
(shards on disk), :mod:`.manifest` (the run's identity), :mod:`.run` (the run, resuming, and
:class:`Run` to read one back), :mod:`.report` (the HTML page).
"""

from __future__ import annotations

import os
from pathlib import Path

from convlens.core.engine import Cancelled, Engine, Failed, SerialEngine, Work
from convlens.workflows.datasets.engines import LocalEngine, engine
from convlens.workflows.datasets.inputs import Item, Listing, PictureLoader, list_items
from convlens.workflows.datasets.manifest import RunMismatchError
from convlens.workflows.datasets.report import dataset_report, run_audit
from convlens.workflows.datasets.run import (
    Run,
    audit,
    explain,
    open_run,
    prepare,
    run_dataset,
)
from convlens.workflows.datasets.store import Maps


def report(run: str | os.PathLike[str] | Run, path: str | os.PathLike[str] | None = None) -> Path:
    """Write the report of a run folder (default ``<run>/report.html``); returns its path."""
    return (run if isinstance(run, Run) else Run(run)).report(path)


__all__ = [
    "Cancelled",
    "Engine",
    "Failed",
    "Item",
    "Listing",
    "LocalEngine",
    "Maps",
    "PictureLoader",
    "Run",
    "RunMismatchError",
    "SerialEngine",
    "Work",
    "audit",
    "dataset_report",
    "engine",
    "explain",
    "list_items",
    "open_run",
    "prepare",
    "report",
    "run_audit",
    "run_dataset",
]
