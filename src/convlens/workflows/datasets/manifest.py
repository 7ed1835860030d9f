"""A run's identity and its manifest.

The identity is everything that decides a row's numbers: the model (a hash of its class, every
parameter and buffer, its preprocessing and postprocessing), each method with every setting
(defaults filled in, the CAM layer resolved), the target rule, the metrics, the seed, the shard
size and the convlens version. A shard is finished when its Parquet file exists and records
the run's identity and the digest of its own items (ids, sources, labels, sizes and
modification times), so a changed picture redoes only its shard, while results of another
model or other settings are refused, never mixed in.

``manifest.json`` (written atomically) holds the identity, the input listing's summary, the
engine, the shards and the counts; ``listing.parquet`` the items themselves.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from convlens.core.model import Model, Preprocessing
from convlens.core.render import write_atomic
from convlens.core.util import jsonable

FORMAT = "convlens-dataset-run"
MANIFEST = "manifest.json"


class RunMismatchError(ValueError):
    """The output folder holds results of a different run (model, methods or settings)."""


def weights_hash(module: torch.nn.Module) -> str:
    """A content hash of a network: its class and every parameter and buffer (names, shapes,
    dtypes, bytes). Two networks with equal weights share it."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_identity(model: Model) -> dict[str, Any]:
    preprocess = model.preprocess
    return {
        "name": model.name,
        "weights": weights_hash(model.module),
        "preprocess": preprocess.to_dict()
        if isinstance(preprocess, Preprocessing)
        else f"custom:{getattr(preprocess, '__qualname__', type(preprocess).__name__)}",
        "postprocess": model.postprocess_name,
        "classes": len(model.synonyms) if model.synonyms is not None else None,
    }


def identity_hash(identity: Mapping[str, Any]) -> str:
    text = json.dumps(jsonable(dict(identity)), sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two identities."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            out += differences(old.get(key), new.get(key), where)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            out += differences(a, b, f"{prefix}[{i}]")
        return out
    if old != new:
        return [f"{prefix}: {_short(old)} -> {_short(new)}"]
    return []


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not readable JSON: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a convlens data set run (format {FORMAT!r})")
    return manifest


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    payload = dict(manifest)
    payload["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_atomic(folder / MANIFEST, (json.dumps(jsonable(payload), indent=1) + "\n").encode())


def check_same_run(folder: Path, manifest: Mapping[str, Any], identity: Mapping[str, Any]) -> None:
    """Refuse to add to ``folder`` when it holds results of another run."""
    old = manifest.get("identity", {})
    if identity_hash(old) == identity_hash(identity):
        return
    found = differences(jsonable(dict(old)), jsonable(dict(identity)))
    shown = "\n  ".join(found[:12]) + ("\n  ..." if len(found) > 12 else "")
    raise RunMismatchError(
        f"{folder} holds results of a different run, which this one would mix with; what "
        f"differs (before -> now):\n  {shown}\nUse another --out folder, or overwrite=True "
        "(--overwrite) to start that run again."
    )


def owned_files(folder: Path) -> list[Path]:
    """The files a run writes in its folder (what overwriting removes; nothing else is)."""
    found = [folder / MANIFEST, folder / "listing.parquet", folder / "report.html"]
    for sub in ("shards", "maps"):
        if (folder / sub).is_dir():
            found += [p for p in (folder / sub).iterdir() if p.is_file()]
    return [p for p in found if p.exists()]


def clear(folder: Path) -> None:
    for path in owned_files(folder):
        path.unlink()
    for sub in ("shards", "maps"):
        if (folder / sub).is_dir() and not any((folder / sub).iterdir()):
            (folder / sub).rmdir()


def check_folder(folder: Path, overwrite: bool) -> dict[str, Any] | None:
    """The manifest already in ``folder`` (``None`` for a new or empty folder); a folder with
    other things in it and no manifest is refused rather than written into."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"expected an output folder, got the file {folder}")
    manifest = read_manifest(folder) if folder.is_dir() else None
    if manifest is None and folder.is_dir():
        others = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
        if others:
            raise ValueError(
                f"{folder} is not empty and holds no convlens run ({', '.join(sorted(others)[:5])}"
                f"{' ...' if len(others) > 5 else ''}); choose an empty or new folder"
            )
    if manifest is not None and overwrite:
        clear(folder)
        return None
    return manifest


def settings_of(info: Any, options: Mapping[str, Any], model: Model) -> dict[str, Any]:
    """Every setting of a method with the value it will run with (given, else its default);
    a CAM's layer resolved to its name."""
    from convlens.techniques.attribution.base import default_layer

    values = {s.name: options.get(s.name, s.default) for s in info.settings}
    for key, value in options.items():
        if key not in values:
            values[key] = value
    if info.needs_layer:
        layer = options.get("layer")
        values["layer"] = layer if layer is not None else default_layer(model)
    return values


def shard_table(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(e) for e in sorted(entries, key=lambda e: int(e["index"]))]


def relative(folder: Path, path: Path) -> str:
    return os.path.relpath(path, folder).replace(os.sep, "/")
