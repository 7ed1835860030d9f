"""Weights files of the catalogues: found in torch's hub cache, else downloaded into it when
asked.

A catalogue model (:mod:`.catalogue`) names one :class:`WeightsFile`: where it can be fetched
(``url``), the file name it has in the cache, and, for torchvision's files, the first hex
digits of its SHA-256 (torchvision puts them in the file name, ``resnet50-11ad3fa6.pth``).
:func:`fetch` looks for the file in torch's hub cache (``torch.hub.get_dir()/checkpoints``,
i.e. ``$TORCH_HOME/hub/checkpoints``) and in the extra places the catalogue names (timm's
Hugging Face cache). It downloads only when asked: ``download=True`` (``cl.load(name,
download=True)``), ``CONVLENS_DOWNLOAD=1`` or the CLI's ``--download``; otherwise a missing
file is refused with one line that says which file, where it was expected and how to fetch it.
``CONVLENS_OFFLINE=1`` (or ``offline=True``, the CLI's ``--offline``) refuses even then. A
download goes to a ``.partial`` file beside its destination, is checked against the hash and
only then renamed, so an interrupted download never leaves a file that looks complete.
Progress is reported through a callback ``progress(done_bytes, total_bytes)`` (total 0 when
the server does not say); the library never prints.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from convlens.core.zoo.registry import MissingWeightsError

Progress = Callable[[int, int], None]
OFFLINE_ENV = "CONVLENS_OFFLINE"
DOWNLOAD_ENV = "CONVLENS_DOWNLOAD"
_TRUE = ("1", "true", "yes", "on")
_CHUNK = 1 << 20
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


class OfflineError(MissingWeightsError):
    """Weights that are not cached and may not be downloaded: none was asked for, or
    downloads are off (``CONVLENS_OFFLINE=1``)."""


class DownloadError(MissingWeightsError):
    """A download that failed or delivered the wrong file."""


@dataclass(frozen=True)
class WeightsFile:
    """One weights file: ``url`` to fetch it from, ``filename`` in torch's hub cache
    (``checkpoints/<filename>``), ``sha256`` (a prefix, checked after a download; ``None``:
    not checked), ``size_mb`` (as the catalogue states it, for listings) and ``elsewhere``:
    further places a complete copy may already be (another tool's cache)."""

    url: str
    filename: str
    sha256: str | None = None
    size_mb: float | None = None
    elsewhere: tuple[Path, ...] = field(default_factory=tuple)

    @staticmethod
    def from_url(url: str, *, size_mb: float | None = None) -> WeightsFile:
        """A file named by its URL's last part; a ``-<hex>.`` in that name is its hash prefix
        (torch.hub's convention)."""
        filename = url.rsplit("/", 1)[-1]
        match = _HASH_IN_NAME.search(filename)
        return WeightsFile(url, filename, match.group(1) if match else None, size_mb)


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else whether ``CONVLENS_OFFLINE`` is set to a true value."""
    if offline is not None:
        return bool(offline)
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE


def wants_download(download: bool | None = None) -> bool:
    """``download`` if given, else whether ``CONVLENS_DOWNLOAD`` is set to a true value."""
    if download is not None:
        return bool(download)
    return os.environ.get(DOWNLOAD_ENV, "").strip().lower() in _TRUE


def hub_checkpoints() -> Path:
    """torch's hub cache folder for weights files (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached(weights: WeightsFile) -> Path | None:
    """The file, if it is on this machine (the hub cache first, then ``elsewhere``)."""
    for path in (hub_checkpoints() / weights.filename, *weights.elsewhere):
        if path.is_file():
            return path
    return None


def fetch(
    weights: WeightsFile,
    *,
    download: bool | None = None,
    offline: bool | None = None,
    progress: Progress | None = None,
    what: str = "",
) -> Path:
    """The local path of ``weights``: cached, or downloaded into the hub cache when asked and
    allowed (see the module docstring). ``what`` names the model in messages."""
    found = cached(weights)
    if found is not None:
        return found
    destination = hub_checkpoints() / weights.filename
    label = what or weights.filename
    if is_offline(offline):
        raise OfflineError(
            f"{label}: weights {weights.filename} are not in the hub cache ({destination}) "
            f"and downloads are off ({OFFLINE_ENV}=1 or --offline); fetch {weights.url} there"
        )
    if not wants_download(download):
        raise OfflineError(
            f"{label}: weights {weights.filename} are not in the hub cache ({destination}); "
            f"convlens downloads only when asked: load(..., download=True), "
            f"`convlens --download ...` or {DOWNLOAD_ENV}=1 (from {weights.url})"
        )
    download_file(weights.url, destination, sha256=weights.sha256, progress=progress)
    return destination


def download_file(
    url: str, destination: Path, *, sha256: str | None = None, progress: Progress | None = None
) -> Path:
    """Download ``url`` to ``destination`` through a ``.partial`` file beside it; the SHA-256
    prefix is checked before the rename (a failed or wrong download leaves nothing)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    digest = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "convlens"})
        with urllib.request.urlopen(request, timeout=60) as response, partial.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            if progress is not None:
                progress(0, total)
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    except (OSError, urllib.error.URLError) as err:  # HTTPError is a URLError
        partial.unlink(missing_ok=True)
        raise DownloadError(f"could not download {url}: {err}") from err
    if sha256 is not None and not digest.hexdigest().startswith(sha256):
        partial.unlink(missing_ok=True)
        raise DownloadError(
            f"{url} delivered a file whose sha256 ({digest.hexdigest()[:12]}...) is not the "
            f"expected {sha256}...; nothing was kept"
        )
    os.replace(partial, destination)
    return destination
