"""Shards on disk: rows in Parquet (one row per picture x method), maps in float16 ``.npy``
files beside them, each file written atomically, the Parquet file last (it is the shard's
commit: a shard without it is unfinished and is redone).

A run folder::

    manifest.json                  the run's identity, input summary, engine, shards, counts
    listing.parquet                every item: id, source, label, mask, boxes, stamp, shard
    shards/00000.parquet           rows; key-value metadata ``convlens``: run and shard identity
    maps/00000.<method>.npy        that shard's maps of one method, float16, flat, in row order;
                                   a row's map is ``[map_offset : map_offset + prod(map_shape)]``
                                   of the file ``map_file`` (relative to the run folder)
    report.html                    the data set report

The rows read without convlens (``pandas.read_parquet("runs/val/shards")``, polars,
DuckDB's ``read_parquet('runs/val/shards/*.parquet')``), the maps with numpy alone
(``np.load(path, mmap_mode="r")``). Temporary files start with a dot, which those readers skip.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from convlens.core.util import safe_filename
from convlens.workflows.datasets.inputs import Item

SHARDS = "shards"
MAPS = "maps"
LISTING = "listing.parquet"
META_KEY = b"convlens"

COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "string"),
    ("source", "string"),
    ("shard", "int32"),
    ("method", "string"),
    ("status", "string"),
    ("error", "string"),
    ("label", "string"),
    ("label_index", "int64"),
    ("target", "int64"),
    ("target_label", "string"),
    ("target_score", "float64"),
    ("target_probability", "float64"),
    ("prediction", "int64"),
    ("prediction_label", "string"),
    ("probability", "float64"),
    ("top_k", "list<int64>"),
    ("top_k_probability", "list<float64>"),
    ("correct", "bool"),
    ("object_area", "float64"),
    ("energy_in_mask", "float64"),
    ("pointing_game", "float64"),
    ("deletion_auc", "float64"),
    ("layer", "string"),
    ("map_file", "string"),
    ("map_offset", "int64"),
    ("map_shape", "list<int32>"),
    ("boxes", "string"),
)
"""The columns of a shard, in order, with their Arrow types."""


def pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(
            "data set runs write Parquet through pyarrow: pip install pyarrow (it comes with "
            "convlens's default install)"
        ) from None
    return pa, pq


def schema() -> Any:
    pa, _ = pyarrow()
    kinds = {
        "string": pa.string(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "list<int64>": pa.list_(pa.int64()),
        "list<float64>": pa.list_(pa.float64()),
        "list<int32>": pa.list_(pa.int32()),
    }
    return pa.schema([(name, kinds[kind]) for name, kind in COLUMNS])


def shard_path(folder: Path, index: int) -> Path:
    return folder / SHARDS / f"{index:05d}.parquet"


def map_path(folder: Path, index: int, method: str) -> Path:
    return folder / MAPS / f"{index:05d}.{safe_filename(method)}.npy"


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _commit(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove_stale(folder: Path) -> None:
    """Temporary files a killed run left behind (never a finished file)."""
    for sub in (SHARDS, MAPS):
        if (folder / sub).is_dir():
            for p in (folder / sub).iterdir():
                if p.name.startswith(".") and p.name.endswith(".tmp"):
                    p.unlink(missing_ok=True)


def remove_shard(folder: Path, index: int) -> None:
    """A shard's rows (first: that undoes its commit) and then its maps."""
    shard_path(folder, index).unlink(missing_ok=True)
    if (folder / MAPS).is_dir():
        for p in (folder / MAPS).glob(f"{index:05d}.*.npy"):
            p.unlink()


def write_shard(
    folder: Path,
    index: int,
    rows: list[dict[str, Any]],
    maps: Mapping[str, Sequence[np.ndarray]],
    meta: Mapping[str, Any],
) -> Path:
    """Write one shard: each method's maps (rows whose ``map_file`` names it, in order), then
    the rows; both atomically (a temporary file, fsync, rename), the rows last."""
    pa, pq = pyarrow()
    (folder / SHARDS).mkdir(parents=True, exist_ok=True)
    (folder / MAPS).mkdir(parents=True, exist_ok=True)
    for method, arrays in maps.items():
        target = map_path(folder, index, method)
        flat = (
            np.concatenate([a.reshape(-1) for a in arrays]).astype(np.float16)
            if arrays
            else np.zeros(0, np.float16)
        )
        tmp = _temporary(target)
        with open(tmp, "wb") as f:
            np.save(f, flat)
        _commit(tmp, target)
    table = pa.Table.from_pylist(rows, schema=schema())
    table = table.replace_schema_metadata({META_KEY: json.dumps(dict(meta)).encode()})
    target = shard_path(folder, index)
    tmp = _temporary(target)
    pq.write_table(table, tmp, compression="zstd")
    _commit(tmp, target)
    return target


def shard_meta(path: Path) -> dict[str, Any] | None:
    """The identity a finished shard recorded (``None`` when the file is not a shard)."""
    _, pq = pyarrow()
    try:
        metadata = pq.read_schema(path).metadata or {}
        return json.loads(metadata[META_KEY])  # type: ignore[no-any-return]
    except (OSError, KeyError, ValueError):
        return None


def finished_shards(folder: Path) -> list[Path]:
    shards = folder / SHARDS
    if not shards.is_dir():
        return []
    return sorted(p for p in shards.glob("[0-9]*.parquet") if p.is_file())


def write_listing(folder: Path, items: Sequence[Item], shard_of: Sequence[int]) -> None:
    pa, pq = pyarrow()
    rows = [asdict(item) | {"shard": s} for item, s in zip(items, shard_of, strict=True)]
    table = pa.Table.from_pylist(rows) if rows else pa.table({})
    target = folder / LISTING
    tmp = _temporary(target)
    pq.write_table(table, tmp, compression="zstd")
    _commit(tmp, target)


def read_listing(folder: Path) -> dict[str, Item]:
    _, pq = pyarrow()
    table = pq.read_table(folder / LISTING)
    fields = set(Item.__dataclass_fields__)
    return {
        row["id"]: Item(**{k: v for k, v in row.items() if k in fields})
        for row in table.to_pylist()
    }


def read_rows(
    folder: Path, columns: Sequence[str] | None = None, *, method: str | None = None
) -> Any:
    """All finished shards as one pandas DataFrame (only ``columns`` when given; only the
    rows of ``method`` when given). Integer and bool columns are pandas' nullable types (a
    failed picture has no prediction: ``<NA>``, not a float NaN)."""
    pa, pq = pyarrow()
    paths = finished_shards(folder)
    wanted = list(columns) if columns is not None else None
    if wanted is not None and method is not None and "method" not in wanted:
        wanted.append("method")
    tables = []
    for path in paths:
        table = pq.read_table(path, columns=wanted)
        if method is not None:
            import pyarrow.compute as pc

            table = table.filter(pc.equal(table["method"], method))
        tables.append(table.replace_schema_metadata(None))
    if not tables:
        empty = schema()
        names = wanted if wanted is not None else empty.names
        table = pa.schema([empty.field(n) for n in names]).empty_table()
    else:
        table = pa.concat_tables(tables)
    import pandas as pd

    nullable = {
        pa.int64(): pd.Int64Dtype(),
        pa.int32(): pd.Int32Dtype(),
        pa.bool_(): pd.BooleanDtype(),
    }
    return table.to_pandas(types_mapper=nullable.get)


class Maps:
    """One method's maps of a run, memory-mapped: nothing is read until a map is asked for,
    and then only its pages.

    ``maps[i]`` (the i-th row that has a map, in id order) or ``maps["some/id.png"]`` is a
    read-only float16 array of the map's shape (a CAM at its layer's resolution);
    ``maps.ids`` the pictures' ids; iterating yields ``(id, map)`` shard by shard."""

    def __init__(self, folder: Path, method: str) -> None:
        self.folder = folder
        self.method = method
        table = read_rows(
            folder, ["id", "status", "map_file", "map_offset", "map_shape"], method=method
        )
        table = table[table["status"] == "ok"].sort_values("id", kind="stable")
        self.ids: list[str] = table["id"].tolist()
        self._where = list(
            zip(
                table["map_file"].tolist(),
                [int(v) for v in table["map_offset"]],  # float where failed rows had none
                [tuple(int(v) for v in s) for s in table["map_shape"]],
                strict=True,
            )
        )
        self._index = {name: i for i, name in enumerate(self.ids)}
        self._open: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def _array(self, name: str) -> np.ndarray:
        if name not in self._open:
            self._open[name] = np.load(self.folder / name, mmap_mode="r")
        return self._open[name]

    def __getitem__(self, key: int | str) -> np.ndarray:
        if isinstance(key, str):
            if key not in self._index:
                raise KeyError(f"no {self.method} map for picture {key!r}")
            key = self._index[key]
        name, offset, shape = self._where[key]
        count = math.prod(shape)
        return self._array(name)[offset : offset + count].reshape(shape)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for i, name in enumerate(self.ids):
            yield name, self[i]

    def shapes(self) -> set[tuple[int, ...]]:
        return {shape for _, _, shape in self._where}

    def __repr__(self) -> str:
        shapes = ", ".join(str(s) for s in sorted(self.shapes()))
        return f"Maps({self.method}, {len(self)} maps of shape {shapes or '-'}, float16, mmap)"
