"""The package as a whole: the conda environment (MICRO.yml) installs what pyproject.toml
requires, and the modules import one another in one direction only."""

from __future__ import annotations

import ast

import pytest
import yaml
from conftest import ROOT


def test_conda_environment_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = set(project["dependencies"]) | set(extras["dev"]) | set(extras["sweep"])
    conda = yaml.safe_load((ROOT / "MICRO.yml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    # torch is pinned to the build the install command uses; the package accepts any >= 2.2
    wanted = {w for w in wanted if not w.startswith("torch")}
    assert wanted <= set(pip), wanted - set(pip)
    assert "torch==2.13.0" in pip and "-e ." in pip


def micro_imports(path) -> set[str]:
    """The ``micro`` modules a source file imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("micro"):
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("micro")}
    return found


def test_dataset_readers_are_the_bottom_of_the_house():
    """micro.data (reading datasets) imports nothing above it — no learner, trainer or dataset
    maker; micro.datagen (making them) sits on top of the learner."""
    below = ("micro.MicroError", "micro.__version__", "micro.envs", "micro.utils", "micro.data.")
    for path in sorted((ROOT / "micro" / "data").glob("*.py")):
        imports = micro_imports(path) - {"micro", "micro.data"}
        above = {m for m in imports if not m.startswith(below)}
        assert not above, f"micro/data/{path.name} imports {sorted(above)}"
    # the check can fail: a maker imports the learner
    assert "micro.algos.sac" in micro_imports(ROOT / "micro" / "datagen" / "behavior.py")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading: lower case, punctuation dropped, spaces to -."""
    return "".join(c for c in heading.lower() if c.isalnum() or c in " -_").replace(" ", "-")


@pytest.mark.parametrize(
    "doc", ["README.md", "results/README.md", "data/README.md", "CHANGELOG.md"]
)
def test_links_within_the_docs_resolve(doc):
    import re

    text = (ROOT / doc).read_text()
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    for target in re.findall(r"\]\(#([^)]+)\)", text):
        assert target in anchors, f"{doc}: link to #{target}, which no heading makes"
    for target in re.findall(r"\]\((?!https?:|#)([^)#\s]+)", text):  # relative file links
        assert (ROOT / doc).parent.joinpath(target).exists(), f"{doc}: link to missing {target}"
