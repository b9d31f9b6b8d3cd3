"""A small real git repository with a history, for the training-data and fine-tuning tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SECRET = "AKIA" + "Q" * 16  # an AWS access key id shape: must never reach training


def git(root: Path, *args: str, when: int = 0) -> None:
    stamp = f"{1_700_000_000 + when} +0000"
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_AUTHOR_DATE": stamp,
        "GIT_COMMITTER_DATE": stamp,
    }
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, env=env)


def commit(root: Path, files: dict[str, str], when: int, message: str = "change") -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message, when=when)


def team_repository(root: Path, functions: int = 5, newest_module: int = 0) -> Path:
    """pkg/core.py grows one function per commit; the newest commits change pkg/util.py and add
    tests/test_core.py; pkg/config.py holds a secret and vendor/ is vendored."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    commit(root, {
        "pkg/core.py": "def add(a, b):\n    return a + b\n",
        "pkg/util.py": "import os\n\n\ndef home():\n    return os.environ.get('HOME', '')\n",
        "pkg/config.py": f"AWS_KEY = '{SECRET}'\n",
        "vendor/lib.py": "def vendored():\n    return 1\n",
        "docs/conf.py": "project = 'team'\n",
    }, when=0)  # fmt: skip
    for i in range(1, functions + 1):
        body = "".join(f"\n\ndef f{k}(x):\n    return x * {k}\n" for k in range(i))
        commit(root, {"pkg/core.py": "def add(a, b):\n    return a + b\n" + body}, when=100 * i)
    commit(
        root, {"pkg/util.py": "import os\n\n\ndef home():\n    return os.path.expanduser('~')\n"}, when=1000
    )
    test = "from pkg.core import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
    commit(root, {"tests/test_core.py": test}, when=2000)
    if newest_module:  # a newest file written like core.py: what a fine-tune should learn to complete
        body = "".join(f"\n\ndef g{k}(x):\n    return x * {k}\n" for k in range(newest_module))
        commit(root, {"pkg/more.py": "def add(a, b):\n    return a + b\n" + body}, when=3000)
    return root
