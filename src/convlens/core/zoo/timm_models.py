"""timm's catalogue (the extra ``convlens[timm]``): ``"timm:<architecture>[.<tag>]"``.

The network is ``timm.create_model(name, pretrained=True)`` with the weights file given
(``pretrained_cfg_overlay={"file": ...}``), so timm applies its own checkpoint filter and
strict loading; the file comes from the hub cache (:func:`.weights.fetch`): torch's
``hub/checkpoints`` first (``timm--<hub id>.safetensors`` for weights on the Hugging Face hub,
the URL's own name for the others, where timm itself caches them), then the Hugging Face cache
timm downloads into (read only, never through the network), else downloaded when asked and allowed.

The preprocessing is timm's ``resolve_data_config`` for the model, mapped as timm's eval
transform builds it:

=====================================  =========================================================
timm data config                       :class:`~convlens.core.model.Preprocessing`
=====================================  =========================================================
``input_size`` (3, H, W)               ``crop=(H, W)``
``crop_pct``, ``crop_mode="center"``   ``resize=floor(H / crop_pct)`` (shorter side; H == W)
``interpolation``                      ``interpolation`` (bicubic / bilinear / nearest)
``mean``, ``std``                      ``mean``, ``std``
=====================================  =========================================================

``crop_mode`` ``squash`` / ``border`` and non-square crops are approximated by the centre mode
and said in ``ModelParts.notes``. Labels: ImageNet-1k models get convlens's ImageNet names, other
ImageNet subsets (12k, 22k) timm's descriptions; other heads none.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from convlens.core.model import Preprocessing
from convlens.core.naming import unknown
from convlens.core.zoo.parts import CatalogueEntry, ModelParts
from convlens.core.zoo.registry import imagenet_classes
from convlens.core.zoo.weights import Progress, WeightsFile, fetch, hub_checkpoints

INSTALL = "pip install 'convlens[timm]'"
HF = "https://huggingface.co"


def available() -> bool:
    return importlib.util.find_spec("timm") is not None


def _timm() -> Any:
    try:
        import timm
    except ImportError as err:
        raise ImportError(f"timm models need timm: {INSTALL}") from err
    return timm


def _config(name: str) -> Any:
    """timm's pretrained config of ``name`` (``arch`` or ``arch.tag``)."""
    timm = _timm()
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, _ = split_model_name_tag(name)
    if not timm.is_model(arch):
        raise unknown("timm model", name, timm.list_models(pretrained=True))
    cfg = get_pretrained_cfg(name, allow_unregistered=False)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        tags = [n for n in timm.list_models(f"{arch}.*", pretrained=True)]
        raise unknown(f"timm weights of {arch}", name, tags)
    return cfg


def _hf_cache(repo: str, filename: str) -> tuple[Path, ...]:
    """Where timm's own download (through huggingface_hub) would be, if it is there."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return ()
    found = try_to_load_from_cache(repo, filename)
    return (Path(found),) if isinstance(found, str) else ()


def weights_file(cfg: Any) -> WeightsFile:
    if cfg.hf_hub_id:
        filename = cfg.hf_hub_filename or "model.safetensors"
        suffix = Path(filename).suffix or ".safetensors"
        repo = cfg.hf_hub_id.split("@", 1)[0]
        return WeightsFile(
            f"{HF}/{repo}/resolve/main/{filename}",
            f"{repo.replace('/', '--')}{suffix}",
            elsewhere=_hf_cache(repo, filename),
        )
    return WeightsFile.from_url(cfg.url)


def entry(name: str) -> CatalogueEntry:
    cfg = _config(name)
    full = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    size = "x".join(map(str, cfg.input_size[1:]))
    return CatalogueEntry(
        name=f"timm:{name}",
        task="classify",
        source="timm",
        description=f"{cfg.tag or full}, {cfg.num_classes} classes, {size} px",
        weights=weights_file(cfg),
    )


def entries(search: str) -> list[CatalogueEntry]:
    timm = _timm()
    return [entry(n) for n in timm.list_models(pretrained=True) if search in n.lower()]


def cached_entries() -> list[CatalogueEntry]:
    """The timm models whose Hugging Face weights convlens keeps in the hub cache."""
    if not available():
        return []
    found = []
    for path in sorted(hub_checkpoints().glob("timm--*")):
        name = path.name.removeprefix("timm--").rsplit(".", 1)[0]  # arch.tag
        try:
            found.append(entry(name))
        except LookupError:  # a file of a model this timm no longer has
            continue
    return found


def preprocessing(config: dict[str, Any]) -> tuple[Preprocessing, list[str]]:
    """timm's data config as a :class:`Preprocessing`, with notes on what is approximated."""
    notes = []
    _, height, width = config["input_size"]
    crop_pct = config.get("crop_pct") or 0.875
    mode = config.get("crop_mode", "center")
    if mode != "center" or height != width:
        notes.append(
            f"timm's crop_mode {mode!r} at {height}x{width} is approximated by a shorter-side "
            "resize and a centre crop"
        )
    interpolation = config.get("interpolation", "bicubic")
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        notes.append(f"timm's interpolation {interpolation!r} is replaced by bicubic")
        interpolation = "bicubic"
    prep = Preprocessing(
        crop=(height, width) if height != width else height,
        resize=math.floor(min(height, width) / crop_pct),
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
        interpolation=interpolation,
    )
    return prep, notes


def labels(module: Any, cfg: Any) -> list[str] | list[list[str]] | None:
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(module)
    if subset is None:
        return None
    if subset == "imagenet-1k":
        return [list(names) for names in imagenet_classes()]
    descriptions = ImageNetInfo(subset).label_descriptions()
    found: list[list[str]] = [d.split(", ") for d in descriptions]
    if cfg.label_offset:
        found = [["background"]] * int(cfg.label_offset) + found
    return found


def build(
    name: str,
    *,
    download: bool | None = None,
    offline: bool | None = None,
    progress: Progress | None = None,
) -> ModelParts:
    timm = _timm()
    cfg = _config(name)
    file, what = weights_file(cfg), f"timm:{name}"
    path = fetch(file, download=download, offline=offline, progress=progress, what=what)
    overlay = {"file": str(path), "source": "timm"}
    module = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    module.eval()
    data = timm.data.resolve_data_config({}, model=module)
    prep, notes = preprocessing(data)
    return ModelParts(
        name=f"timm:{name}",
        module=module,
        preprocessing=prep,
        labels=labels(module, cfg),
        task="classify",
        source="timm",
        weights=path,
        notes=notes,
    )
