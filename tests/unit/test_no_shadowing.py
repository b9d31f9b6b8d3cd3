"""The checkout never shadows an installed module.

The layout is fixed: top-level folders named `kernels`, `training`, `completion`, ... sit in the
repository root, and any Python started there (`python -c`, `python -m`, `torchrun -m`,
`accelerate launch -m`; pytest's rootdir) has that root at the front of `sys.path`. Were those
folders regular packages, `import kernels` inside transformers would get this project's folder
instead of Hugging Face's `kernels` distribution (transformers 5.25 imports it at start-up).

They are namespace packages instead (no `__init__.py`; the project is installed as `splice.*`), and
Python's import system returns a namespace package only when no entry of `sys.path` holds a regular
module or package of that name. So an installed module always wins, and where none is installed,
importing the name runs none of the folder's code. These tests check exactly that, from processes
started in the checkout, for every top-level folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = "splice_shadow_probe"
PROBE_CODE = """
import importlib, json, sys
found = {}
for name in sys.argv[1:] or NAMES:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        found[name] = {"error": repr(exc)}
        continue
    found[name] = {
        "file": getattr(module, "__file__", None),
        "path": [str(p) for p in getattr(module, "__path__", [])],
        "origin": getattr(module, "ORIGIN", None),
    }
print("PROBE " + json.dumps(found))
"""


def top_level_names() -> list[str]:
    """Every folder of the repository root whose name Python could import."""
    names = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and p.name.isidentifier())
    assert {"kernels", "training", "completion", "tests"} <= set(names)
    return names


def in_a_folder_of_the_checkout(file: str | None) -> bool:
    """Whether a module's file lies in one of the repository's top-level folders (a virtual
    environment inside the checkout, `.venv/`, is not one of them)."""
    if file is None:
        return False
    path = Path(file).resolve()
    return any(path.is_relative_to(ROOT / name) for name in top_level_names())


def _install_fakes(site: Path, names: list[str]) -> None:
    """A stand-in 'installed distribution' for every name, in a folder that goes on PYTHONPATH
    (after the working directory on `sys.path`, where pip's site-packages would also be)."""
    for name in names:
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text('ORIGIN = "installed"\n')
    (site / f"{PROBE}.py").write_text(f"NAMES = {names!r}\n" + PROBE_CODE)


def _run(cmd: list[str], site: Path) -> dict[str, dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("PROBE "))


def _launchers() -> list:
    python = [sys.executable]
    bindir = Path(sys.executable).parent
    cases = [
        pytest.param([*python, "-c", f"import {PROBE}"], id="python -c"),
        pytest.param([*python, "-m", PROBE], id="python -m"),
    ]
    torchrun = shutil.which("torchrun", path=str(bindir))
    cases.append(
        pytest.param(
            [torchrun or "torchrun", "--standalone", "--nproc-per-node", "1", "-m", PROBE],
            id="torchrun -m",
            marks=pytest.mark.skipif(torchrun is None, reason="torchrun is not installed"),
        )
    )
    accelerate = shutil.which("accelerate", path=str(bindir))
    cases.append(
        pytest.param(
            [accelerate or "accelerate", "launch", "--cpu", "--num_processes", "1", "-m", PROBE],
            id="accelerate launch -m",
            marks=pytest.mark.skipif(accelerate is None, reason="accelerate is not installed"),
        )
    )
    return cases


@pytest.mark.parametrize("cmd", _launchers())
def test_installed_modules_win_over_the_checkouts_folders(cmd: list[str], tmp_path: Path) -> None:
    names = top_level_names()
    _install_fakes(tmp_path / "site", names)
    found = _run(cmd, tmp_path / "site")
    shadowed = {name: info for name, info in found.items() if info.get("origin") != "installed"}
    assert not shadowed, f"the checkout shadows installed modules: {shadowed}"


def test_without_an_installed_module_no_folder_code_runs(tmp_path: Path) -> None:
    """Nothing installed under a folder's name: importing it finds nothing, or a namespace package
    that executes no file of the checkout (and gives way to any module installed later)."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / f"{PROBE}.py").write_text(f"NAMES = {top_level_names()!r}\n" + PROBE_CODE)
    found = _run([sys.executable, "-c", f"import {PROBE}"], tmp_path / "site")
    for name, info in found.items():
        assert not in_a_folder_of_the_checkout(info.get("file")), (
            f"`import {name}` in the checkout runs {info['file']}"
        )


def test_transformers_imports_in_the_checkout(tmp_path: Path) -> None:
    """The regression itself: transformers imports Hugging Face's `kernels` when it is installed."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / f"{PROBE}.py").write_text("NAMES = ['kernels']\n" + PROBE_CODE)
    found = _run(
        [sys.executable, "-c", f"from transformers import LlamaConfig; import {PROBE}"], tmp_path / "site"
    )
    assert not in_a_folder_of_the_checkout(found["kernels"].get("file")), found


def test_this_process_resolves_no_name_to_the_checkout() -> None:
    """Whatever put entries on pytest's own `sys.path`, no folder of the checkout answers a name."""
    for name in top_level_names():
        spec = importlib.util.find_spec(name)
        origin = None if spec is None or spec.origin == "namespace" else spec.origin
        assert not in_a_folder_of_the_checkout(origin), f"{name} -> {origin}"
