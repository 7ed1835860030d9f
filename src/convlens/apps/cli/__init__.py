"""The ``convlens`` command line: a thin layer over the library, one module per group of
commands, each registering its commands on :data:`common.app` when imported.

torch and the library are imported inside the commands, so ``convlens --help`` is instant.
Errors the user can fix (a bad file, an unknown layer or class) print one line, not a trace.
"""

# the order of the imports is the order of `convlens --help`
# isort: off
from convlens.apps.cli import models  # noqa: F401  (each module registers its commands)
from convlens.apps.cli import activations  # noqa: F401
from convlens.apps.cli import explain  # noqa: F401
from convlens.apps.cli import featurevis  # noqa: F401
from convlens.apps.cli import tcav  # noqa: F401
from convlens.apps.cli import detect  # noqa: F401
from convlens.apps.cli import segment  # noqa: F401
from convlens.apps.cli import evaluate  # noqa: F401
from convlens.apps.cli import dataset  # noqa: F401
from convlens.apps.cli import train  # noqa: F401
from convlens.apps.cli import toons  # noqa: F401
from convlens.apps.cli import serve  # noqa: F401

# isort: on
from convlens.apps.cli.common import app


def main() -> None:
    app()


__all__ = ["app", "main"]
