"""Create (or reuse) the development virtual environment.

The environment's third-party packages depend only on the declared requirements, so it is
cached under ``~/.cache/convlens/venv-<hash>`` where the hash covers the dependency lists of
``pyproject.toml`` and every file in ``requirements/``. ``.venv`` in the checkout is a link to
that folder; the project itself is installed editable on every call (a few seconds), so a
cached environment always points at the checkout that uses it. Builds take a lock per
environment, and an environment is pruned only when no process runs from it and no checkout
has linked to it for two weeks, so checkouts on different requirement sets can share the cache.

Stdlib only: this runs before anything is installed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CONVLENS_CACHE", Path.home() / ".cache" / "convlens"))
STAMP = "convlens-deps-complete"
USED = "convlens-last-used"
KEEP_DAYS = 14  # an environment no checkout has used for this long is pruned


def flat_requirements(project: dict, extras: list[str]) -> list[str]:
    """The project's core requirements plus ``extras``, with self-references expanded."""
    name = project["name"]
    optional = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    seen: set[str] = set()
    todo = list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in optional[extra]:
            match = re.fullmatch(rf"{re.escape(name)}\[([^\]]+)\]", req.strip())
            if match:
                todo.extend(e.strip() for e in match.group(1).split(","))
            else:
                out.append(req)
    return sorted(set(out))


def in_use(venv: Path) -> bool:
    """Whether ``venv`` may still be wanted: it is being built, a running process was started
    from it, or a checkout linked to it within ``KEEP_DAYS`` (several checkouts, e.g. git
    worktrees on different branches, share the cache; pruning one's environment under it would
    break it)."""
    used = venv / USED
    if used.exists() and time.time() - used.stat().st_mtime < KEEP_DAYS * 86400:
        return True
    lock = venv.with_name(f"{venv.name}.lock")
    if lock.exists():
        with open(lock) as held:
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True  # another checkout is building it right now
    marker = str(venv).encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes():
                return True
        except OSError:
            continue
    return False


def main() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirements = flat_requirements(pyproject["project"], ["dev"])
    build = pyproject["build-system"]["requires"]
    req_dir = ROOT / "requirements"
    key = {
        "python": sys.version.split()[0],
        "requirements": requirements,
        "build": build,
        "files": {p.name: p.read_text() for p in sorted(req_dir.glob("*.txt"))},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    venv = CACHE / f"venv-{digest}"
    python = venv / "bin" / "python"

    def pip(*args: str) -> None:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *args], check=True)

    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"venv-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per environment; others wait for it
        if not (venv / STAMP).exists():
            if venv.exists():
                shutil.rmtree(venv)  # a half-built environment from an interrupted run
            print(f"building the environment in {venv} (a few minutes, once)", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            pip("--upgrade", "pip", *build, "wheel")
            pip("-c", str(req_dir / "constraints.txt"), *requirements)
            pip("--no-deps", "-r", str(req_dir / "assets.txt"))
            pip("--no-deps", "-r", str(req_dir / "peers.txt"))
            (venv / STAMP).write_text(json.dumps(key, indent=1))
        (venv / USED).touch()
    for old in CACHE.glob("venv-*"):  # environments of older requirement sets
        if old.is_dir() and old != venv and not in_use(old):
            shutil.rmtree(old, ignore_errors=True)
            (CACHE / f"{old.name}.lock").unlink(missing_ok=True)

    link = ROOT / ".venv"
    if link.is_symlink() or link.exists():
        if link.is_symlink() and Path(os.readlink(link)) == venv:
            pass
        elif link.is_symlink():
            link.unlink()
        else:
            shutil.rmtree(link)
    if not link.exists():
        link.symlink_to(venv)
    pip("--no-deps", "--no-build-isolation", "-e", str(ROOT))


if __name__ == "__main__":
    main()
