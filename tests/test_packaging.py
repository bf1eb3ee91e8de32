"""The package as a whole: the conda environment (MICRO.yml) installs what pyproject.toml
requires, and the modules import one another in one direction only."""

from __future__ import annotations

import ast
import sys

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


PACKAGE = ROOT / "micro"


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _skipped_block(node) -> bool:
    """``if TYPE_CHECKING:`` (annotations only) and ``if __name__ == "__main__":`` (the
    ``python -m`` entry of a module whose command line lives in micro.cli)."""
    if not isinstance(node, ast.If):
        return False
    test = ast.unparse(node.test)
    return test in ("TYPE_CHECKING", "typing.TYPE_CHECKING") or "__main__" in test


def micro_imports(path) -> set[str]:
    """The ``micro`` modules a source file imports, at its top or inside functions (not in
    ``_skipped_block``s): each ``from micro.a import b`` names micro.a.b when that is a module,
    else micro.a."""
    found = set()

    def visit(node):
        if _skipped_block(node):
            return
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("micro"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if is_module(sub) else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("micro"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): micro_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert "micro.run_dir" in graph["micro.trainer"]  # the check can see an edge
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if dep == module or dep not in graph:
                continue
            assert state.get(dep) != 1, "import circle: " + " -> ".join([*path, module, dep])
            if dep not in state:
                visit(dep, [*path, module])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [])


def test_dataset_readers_are_the_bottom_of_the_house():
    """micro.data (reading datasets) imports nothing above it — no learner, trainer or dataset
    maker; micro.datagen (making them) sits on top of the learner."""
    below = ("micro.run_dir", "micro.envs", "micro.utils", "micro.data")
    for path in sorted((PACKAGE / "data").glob("*.py")):
        above = {m for m in micro_imports(path) - {"micro"} if not m.startswith(below)}
        assert not above, f"micro/data/{path.name} imports {sorted(above)}"
    # the check can fail: a maker imports the learner
    assert "micro.algos.sac" in micro_imports(PACKAGE / "datagen" / "behavior.py")


LOOP = ("micro.trainer", "micro.pipeline", "micro.rollout", "micro.sweep", "micro.datagen")


def test_analysis_reads_run_directories_and_policy_files_never_the_loop():
    analysis = ["report", "results", "plots", "robustness_summary", "eval_sweep"]
    graph = import_graph()
    for name in analysis:
        reached, todo = set(), [f"micro.{name}"]
        while todo:  # everything it imports, directly or not
            for dep in graph.get(todo.pop(), ()):
                if dep not in reached:
                    reached.add(dep)
                    todo.append(dep)
        loop = sorted(m for m in reached if m.startswith(LOOP))
        assert not loop, f"micro.{name} reaches {loop}"


def test_only_entry_points_import_the_command_line():
    """The library never depends on its command line: micro.cli is imported by the entry
    scripts, by itself, and by the ``python -m`` blocks of modules that keep their command."""
    for module, deps in import_graph().items():
        if not module.startswith("micro.cli"):
            cli = sorted(d for d in deps if d.startswith("micro.cli"))
            assert not cli, f"{module} imports {cli}"
    for script in ("train.py", "eval.py", "report.py", "sweep.py", "fit_dynamics.py"):
        assert any(m.startswith("micro.cli") for m in micro_imports(ROOT / script)), script


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading: lower case, punctuation dropped, spaces to -."""
    return "".join(c for c in heading.lower() if c.isalnum() or c in " -_").replace(" ", "-")


DOCS = ["README.md", "results/README.md", "data/README.md", "CHANGELOG.md"]
DOCS += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))


def _anchors(path) -> set[str]:
    import re

    return {github_anchor(h) for h in re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)}


@pytest.mark.parametrize("doc", DOCS)
def test_links_within_the_docs_resolve(doc):
    """Every link to a heading (in the file, or ``other.md#heading``) and every relative file
    link resolves."""
    import re

    text = (ROOT / doc).read_text()
    for target in re.findall(r"\]\(#([^)]+)\)", text):
        assert target in _anchors(ROOT / doc), f"{doc}: link to #{target}, which no heading makes"
    for target, anchor in re.findall(r"\]\((?!https?:|#)([^)#\s]+)(?:#([^)\s]+))?", text):
        path = (ROOT / doc).parent.joinpath(target)
        assert path.exists(), f"{doc}: link to missing {target}"
        if anchor:
            assert anchor in _anchors(path), f"{doc}: link to {target}#{anchor}, no such heading"


def test_the_readme_reads_in_five_minutes():
    """The README is what it is, install, a quick start, results and links: the reference and
    the measurement notes live in docs/."""
    assert len((ROOT / "README.md").read_text().splitlines()) < 150
    assert len(DOCS) >= 4 + 8


def test_console_scripts_resolve():
    """Every [project.scripts] entry names a function that exists (micro-train once named a
    module that did not)."""
    import importlib

    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


@pytest.mark.parametrize(
    "script",
    [*sorted(f"results/{p.name}" for p in (ROOT / "results").glob("*.sh")), "bench/gpu.sh"],
)
def test_shell_scripts_parse(script):
    import subprocess

    path = ROOT / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


def test_longruns_status_lists_every_job_of_both_lanes(tmp_path):
    import subprocess

    env = {"PATH": "/usr/bin:/bin", "LONGRUNS": str(tmp_path), "PY": sys.executable}
    env["LANE_A"] = "behavior:hopper:20000 dynamics:hopper-medium-200k"
    env["LANE_B"] = "population:micro:hopper-medium-200k"
    done = subprocess.run(
        ["bash", "results/longruns.sh", "status"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "lane A: not running",
        "  behavior:hopper:20000: not started",
        "  dynamics:hopper-medium-200k: not started",
        "lane B: not running",
        "  population:micro:hopper-medium-200k: not started",
    ]
    # a fit done, and a population under way: its epoch, and each run's last evaluation
    (tmp_path / "dynamics-hopper-medium-200k").mkdir()
    (tmp_path / "dynamics-hopper-medium-200k" / "model.pt").write_bytes(b"")
    header = "epoch,step,critic_loss,eval_normalized_score,eval_normalized_score_std"
    for seed, rows in ((0, ["1,1000,0.5,,", "2,2000,0.4,41.25,3", "3,3000,0.3,,"]),
                       (1, ["1,1000,0.5,,", "2,2000,0.4,38.04,2", "3,3000,0.3,,"])):  # fmt: skip
        run = tmp_path / "runs" / "hopper-medium-v2" / "micro" / f"seed{seed}-20261207-000000"
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.pt").write_bytes(b"")
        (run / "progress.csv").write_text("\n".join([header, *rows]) + "\n")
    done = subprocess.run(
        ["bash", "results/longruns.sh", "status"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.stdout.splitlines()[2] == "  dynamics:hopper-medium-200k: finished"
    assert done.stdout.splitlines()[4] == (
        "  population:micro:hopper-medium-200k: epoch 3 of 200 saved, last evaluation 41.2 / 38.0 "
        "normalized"
    )
    bad = subprocess.run(
        ["bash", "results/longruns.sh", "run", "nonsense:x:y"], cwd=ROOT, env=env,
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "unknown job nonsense:x:y" in bad.stderr


def test_longruns_carries_a_behavior_run_to_a_fresh_machine(tmp_path):
    """carry saves each behavior job's state; on a machine without the run, the job goes on
    from it (the lane runs the committed code: HEAD)."""
    import subprocess

    import torch

    lanes, carried = tmp_path / "longruns", tmp_path / "carried"
    env = {"PATH": "/usr/bin:/bin", "LONGRUNS": str(lanes), "PY": sys.executable}
    env.update(LANE_A="behavior:hopper:5100", LANE_B="", CARRIED=str(carried), OMP_NUM_THREADS="1")
    run = lanes / "behavior" / "hopper"
    first = [sys.executable, "-m", "micro.datagen.behavior", "--env", "hopper", "--steps", "5000"]
    made = subprocess.run(
        [*first, "--out", str(run), "--no_progress"], cwd=ROOT, env=env, capture_output=True
    )  # 5000 uniform-random steps: no update yet
    assert made.returncode == 0, made.stderr

    def longruns(*args):
        return subprocess.run(
            ["bash", "results/longruns.sh", *args], cwd=ROOT, env=env, capture_output=True,
            text=True,
        )  # fmt: skip

    done = longruns("carry")
    assert done.returncode == 0 and "step 5000" in done.stdout, done.stderr
    assert (carried / "hopper.pt").is_file()
    (run.parent / "kept").mkdir()
    run.rename(run.parent / "kept" / "hopper")  # the machine is fresh: no run folder
    assert longruns("status").stdout.splitlines() == [
        "lane A: not running",
        f"  behavior:hopper:5100: not started here; goes on from {carried}/hopper.pt",
        "lane B: not running",
    ]
    done = longruns("run", "behavior:hopper:5100")
    assert done.returncode == 0, done.stderr
    state = torch.load(run / "state.pt", weights_only=True)
    assert (state["step"], state["replay_from"], len(state["carried_at"])) == (5100, 5000, 1)
    assert longruns("carry").returncode == 0  # carried again: replaced
    assert torch.load(carried / "hopper.pt", weights_only=True)["state"]["step"] == 5100
