"""The dependency rule (pyproject.toml [tool.importlinter]) holds; each contract catches what it forbids."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("blender_scripts", "curation", "shards", "model", "fit4d", "evaluation", "profiles")
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess:
    if not LINT.is_file():
        pytest.fail(f"{LINT} is missing: install the dev extra (pip install -e '.[dev]', import-linter)")
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run(
        [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_tree_keeps_every_contract():
    proc = lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


@pytest.fixture(scope="module")
def broken_tree(tmp_path_factory) -> subprocess.CompletedProcess:
    """A copy of the packages with one forbidden import per contract (a cycle for the last two)."""
    root = tmp_path_factory.mktemp("tree")
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root)
    bad = {
        "shards/_bad.py": "import model.vae\n",
        "profiles/_bad.py": "import shards.layout\n",
        "blender_scripts/_bad.py": "import shards.layout\n",
        "model/_bad.py": "import curation.render\n",
        "fit4d/_bad.py": "import curation.render\n",
        "evaluation/_bad.py": "import curation.render\n",
        "curation/_cycle_a.py": "import curation._cycle_b\n",
        "curation/_cycle_b.py": "import curation._cycle_a\n",
    }
    for path, text in bad.items():
        (root / path).write_text(text)
    return lint(root)


@pytest.mark.parametrize(
    "contract",
    [
        "shards/ and profiles/ import no other package of ours",
        "shards/ does not import profiles/ (nor profiles/ shards/)",
        "blender_scripts/ (runs inside Blender) imports nothing of ours but profiles/",
        "model/ never imports curation/ or blender_scripts/",
        "fit4d/ may import model/, shards/, profiles/ only",
        "evaluation/ may import model/, shards/, profiles/, fit4d/ only",
        "no cycles between packages: each layer imports only the layers below it",
        "no cycles between the modules of a package",
    ],
)
def test_each_contract_breaks_on_a_forbidden_import(broken_tree, contract):
    assert broken_tree.returncode != 0
    assert f"{contract} BROKEN" in broken_tree.stdout, broken_tree.stdout[-3000:]
