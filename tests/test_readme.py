"""Every example in the README runs: the CLI lines and the Python blocks."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import convlens as cl
from convlens.apps.cli import app

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README.read_text(), flags=re.S)
CLI_LINES = [
    line.split("  #")[0].strip()
    for lang, body in BLOCKS
    if lang == "bash"
    for line in re.sub(r"\\\n\s*", "", body).splitlines()  # join continued lines
    if line.startswith("convlens ")
]
PYTHON = [body for lang, body in BLOCKS if lang == "python"]


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv1(x))).flatten(1))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The files the README's examples name: cat.jpg, dog.png and toy.onnx."""
    shutil.copy(cl.sample("chelsea"), tmp_path / "cat.jpg")
    cl.load_image(cl.sample("coffee")).save(tmp_path / "dog.png")
    torch.manual_seed(0)
    torch.onnx.export(
        Toy().eval(), (torch.rand(1, 3, 224, 224),), str(tmp_path / "toy.onnx"), dynamo=False
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_has_examples():
    assert len(CLI_LINES) >= 6 and len(PYTHON) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("line", CLI_LINES)
def test_cli_example(line, workdir):
    if "data/toons" in line and "toons make" not in line:
        from convlens.data import toons

        toons.write(workdir / "data" / "toons", n=120, seed=7)
    result = CliRunner().invoke(app, shlex.split(line)[1:])
    assert result.exit_code == 0, f"{line}\n{result.output}"


@pytest.mark.slow
def test_python_examples(workdir):
    plugin = next(body for body in PYTHON if body.startswith("# my_plugin.py"))
    (workdir / "my_plugin.py").write_text(plugin)
    mine = cl.load("my_plugin.py")
    assert mine.name == "my net" and mine.labels == ["cat", "not cat"]
    assert mine.predict("cat.jpg").probabilities.sum().item() == pytest.approx(1.0)
    namespace: dict = {}
    for body in PYTHON:
        if body is not plugin:
            exec(compile(body, "README.md", "exec"), namespace)
    assert namespace["pred"].topk(0)[0][:2] == (285, "Egyptian cat")
    assert namespace["cam"].layer == "features" and namespace["cam"].map.shape == (1, 7, 7)
    assert namespace["cam"].target_labels == ["tabby"]
    assert float(namespace["ig"].extras["completeness_error"].max()) < 2.0
    assert namespace["hits"].mean >= 0.8
    assert namespace["check"].flagged is False
    assert len(namespace["report"].to_dict()["results"]) == 4  # 2 methods x 2 metrics
    assert (workdir / "out" / "channel17.png").is_file()
