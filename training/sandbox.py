"""Run untrusted generated code in a subprocess that cannot take the harness down.

Layers, each of which covers what the others miss:

- a fresh interpreter (`python -I`: no user site, no environment hooks) in a temporary
  directory that is removed afterwards; stdout/stderr go to files capped by RLIMIT_FSIZE;
- resource limits set before exec: address space (memory), CPU seconds, file size, and
  processes (RLIMIT_NPROC; when the harness runs as root, the child first drops to `nobody`,
  since the kernel never applies that limit to root, and runs the system's python3 if `nobody`
  cannot reach this interpreter);
- its own session and process group: at the wall-clock timeout, and after every run, the whole
  group is killed with SIGKILL until none of it is left, so grandchildren (a fork bomb) die too;
- no network: a new network namespace where the kernel allows it (root), and in every case a
  prelude that replaces socket creation, process spawning and destructive file functions with
  ones that raise (the `reliability_guard` of OpenAI's human-eval, plus sockets).

The prelude is not a security boundary against a determined adversary (ctypes can undo it);
the limits, the namespace and the process-group kill are what bound a runaway program.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Status = Literal["passed", "failed", "timeout"]

_NOBODY = 65534
_CLONE_NEWNET = 0x40000000

PRELUDE = """\
def _splice_guard():
    import builtins, faulthandler, os, shutil, socket, subprocess, sys
    faulthandler.disable()

    def _blocked(*args, **kwargs):
        raise PermissionError("blocked by the splice sandbox")

    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
                 "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod",
                 "fchown", "chmod", "chown", "chroot", "lchown", "execv", "execve", "execvp", "spawnv",
                 "posix_spawn", "posix_spawnp", "popen"):
        if hasattr(os, name):
            setattr(os, name, _blocked)
    shutil.rmtree = shutil.move = shutil.chown = _blocked
    subprocess.Popen = _blocked
    socket.socket = _blocked
    socket.create_connection = _blocked
    builtins.help = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None


_splice_guard()
del _splice_guard
"""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock
    memory_bytes: int = 2 << 30  # address space
    max_processes: int = 16  # processes the child may own (beyond what its user already runs)
    file_bytes: int = 1 << 20  # largest file it may write (stdout and stderr included)
    guard: bool = True  # run PRELUDE before the program
    drop_privileges: bool = True  # as root: become nobody, so that RLIMIT_NPROC applies
    isolate_network: bool = True  # as root: a new, empty network namespace

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.memory_bytes <= 0 or self.max_processes < 1 or self.file_bytes <= 0:
            raise ValueError(f"sandbox limits must be positive: {self}")


@dataclass(frozen=True)
class RunResult:
    status: Status
    returncode: int | None  # None when killed at the timeout
    stdout: str  # the last 2,000 characters
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def world_executable(path: str) -> bool:
    """Whether a user with no special rights can run `path` (every directory on the way searchable)."""
    real = Path(os.path.realpath(path))
    try:
        if not real.stat().st_mode & 0o001:
            return False
        return all(parent.stat().st_mode & 0o001 for parent in real.parents)
    except OSError:
        return False


def sandbox_interpreter(as_nobody: bool) -> str:
    """This interpreter, or, when `nobody` cannot run it (a Python under /root), the system's python3."""
    if not as_nobody or world_executable(sys.executable):
        return sys.executable
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if world_executable(candidate):
            return candidate
    return ""


def _user_tasks(uid: int) -> int:
    """Threads of all processes of `uid`: what RLIMIT_NPROC actually counts."""
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(os.path.join(entry.path, "task")))
    return count


def _preexec(limits: SandboxLimits, as_nobody: bool, nproc: int) -> None:
    """Runs in the child between fork and exec (async-signal-safe enough for CPython's use)."""
    os.setsid()
    if limits.isolate_network and os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.unshare(
            _CLONE_NEWNET
        )  # best effort: a container may forbid it; the prelude still blocks sockets
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    cpu = int(limits.timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if as_nobody:
        os.setgroups([])
        os.setgid(_NOBODY)
        os.setuid(_NOBODY)
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def _live_members(pgid: int) -> int:
    """Processes of group `pgid` that are not zombies (zombies are dead; whoever reaps them will)."""
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            count += 1
    return count


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's group until no live member is left (a fork bomb adds members for a moment)."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)
        if proc.returncode is not None and _live_members(proc.pid) == 0:
            break
    proc.wait()


def run_program(
    source: str, limits: SandboxLimits | None = None, *, interpreter: str | None = None
) -> RunResult:
    """Execute `source` as a Python program under `limits`; passed means exit status 0 in time.
    `interpreter`: another Python to run it with (a repository's own virtualenv); it must be one
    that `nobody` can run when the harness is root and drops privileges."""
    limits = limits or SandboxLimits()
    as_nobody = limits.drop_privileges and os.geteuid() == 0
    if interpreter is None:
        interpreter = sandbox_interpreter(as_nobody)
    elif as_nobody and not world_executable(interpreter):
        raise ValueError(f"the sandbox runs as nobody, who cannot run {interpreter}")
    if not interpreter:  # no interpreter nobody may run: stay root (no process limit; the group kill remains)
        as_nobody, interpreter = False, sys.executable
    uid = _NOBODY if as_nobody else os.getuid()
    nproc = _user_tasks(uid) + limits.max_processes
    workdir = Path(tempfile.mkdtemp(prefix="splice-sandbox-"))
    start = time.monotonic()
    try:
        program = workdir / "program.py"
        program.write_text((PRELUDE + "\n" if limits.guard else "") + source)
        out_path, err_path = workdir / "stdout", workdir / "stderr"
        if as_nobody:
            os.chmod(workdir, 0o777)
            program.chmod(0o644)
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                [interpreter, "-I", str(program)],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"},
                preexec_fn=lambda: _preexec(limits, as_nobody, nproc),
                close_fds=True,
            )
            try:
                returncode: int | None = proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                returncode = None
            _kill_group(proc)  # leftovers of a finished program as well as a hung one
        seconds = time.monotonic() - start
        stdout = out_path.read_text(errors="replace")[-2000:]
        stderr = err_path.read_text(errors="replace")[-2000:]
        if returncode is None:
            status: Status = "timeout"
        elif returncode == -signal.SIGXCPU or (returncode == -signal.SIGKILL and seconds >= limits.timeout_s):
            status = "timeout"
        else:
            status = "passed" if returncode == 0 else "failed"
        return RunResult(status, returncode, stdout, stderr, seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
