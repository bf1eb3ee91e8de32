"""The conda environment (MICRO.yml) installs what pyproject.toml requires."""

from __future__ import annotations

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
