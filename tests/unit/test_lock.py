"""The lock CI installs from (`.ci/constraints.lock`) is complete and agrees with pyproject's ranges.

pyproject.toml says what users may install; the lock says what the suite last passed with. These
tests fail when a dependency is added to pyproject without a pin, when a pin falls outside its
range, when an installed distribution of the lock needs one the lock lacks, and when the README's
test command stops installing from the lock.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / ".ci" / "constraints.lock"


def read_lock(path: Path = LOCK) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and name and version, f"{path.name}:{number}: not `name==version`: {raw!r}"
        key = canonicalize_name(name)
        assert key not in pins, f"{path.name}:{number}: {name} is pinned twice"
        pins[key] = Version(version)
    return pins


def project_requirements() -> list[Requirement]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    specs = [
        *data["build-system"]["requires"],
        *data["project"]["dependencies"],
        *data["project"]["optional-dependencies"]["dev"],
    ]
    return [Requirement(spec) for spec in specs]


def test_every_requirement_is_pinned_within_its_range() -> None:
    pins = read_lock()
    for req in project_requirements():
        if req.marker is not None and not req.marker.evaluate():
            continue
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{req.name} is required by pyproject.toml but not pinned in the lock"
        assert req.specifier.contains(pin, prereleases=True), f"lock pins {req.name}=={pin}, outside {req}"


def test_torch_pin_matches_cpu_and_cuda_builds() -> None:
    assert read_lock()["torch"].local is None, "pin torch without a local label such as +cpu"


def test_lock_is_closed_under_installed_requirements() -> None:
    """Each locked distribution installed here at its locked version needs only locked ones."""
    pins = read_lock()
    checked = 0
    for name, pin in pins.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if Version(dist.version).public != pin.public:
            continue  # another version is installed (e.g. `.ci/newest`): its metadata says nothing
        checked += 1
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            assert canonicalize_name(req.name) in pins, f"{name} {pin} requires {req}, not in the lock"
    assert checked, "no distribution of the lock is installed at its locked version"


def test_readme_test_command_installs_from_the_lock() -> None:
    command = (ROOT / "README.md").read_text().split("```bash\n")[2].split("```", 1)[0]
    installs = [part.strip() for part in command.split("&&") if part.strip().startswith("pip install")]
    assert len(installs) >= 2, command
    for part in installs:
        assert "-c .ci/constraints.lock" in part, f"installs without the lock: {part}"


def test_read_lock_rejects_malformed_lines(tmp_path: Path) -> None:
    import pytest

    bad = tmp_path / "lock"
    for text in ("torch>=2\n", "numpy==1.0\nNumPy==1.1\n"):
        bad.write_text(text)
        with pytest.raises(AssertionError):
            read_lock(bad)
