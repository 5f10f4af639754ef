"""The parent side of one sandboxed program: start the child (:mod:`sandbox_child`), wait, kill, and read its verdict.

:mod:`selectbench.evaluate.sandbox` decides the isolation and the limits; this module runs one program under them.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Size of the in-memory working folder in namespace mode (a tmpfs, gone when the sample ends).
WORKDIR_MB = 64
#: Highest process id in a sample's PID namespace (kernel >= 6.14; 301 is the kernel's minimum): bounds a fork bomb
#: even where RLIMIT_NPROC does not apply (the evaluator runs as root).
PID_MAX = 301
#: Characters of stdout / stderr kept in a result.
TAIL_CHARS = 4000

# The status channel (an inherited file) carries these lines from the child: how far the program got.
_READY, _DONE = "ready", "done"
# Appears in every sandbox process's command line, so leftovers can be found (tests do).
MARKER = "selectbench-sandbox"
# The child process's code: a standalone module (standard library only), run as a file by `python -I`.
CHILD = Path(__file__).with_name("sandbox_child.py")


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one program.

    Attributes:
        status: ``passed`` (ran to its last line and exited 0), ``failed`` (an exception, a non-zero exit, an exit
            before its end such as ``sys.exit(0)``, a signal, a memory or file-size limit), ``timeout`` (the
            wall-clock or CPU-time limit) or ``error`` (the sandbox itself could not start the program).
        returncode: the program's exit status; negative for a signal; None when it was killed on timeout.
        stdout: the last ``TAIL_CHARS`` characters the program wrote to stdout.
        stderr: the last ``TAIL_CHARS`` characters it wrote to stderr (a traceback ends up here).
        duration_s: wall-clock seconds from start to end, interpreter start-up included.
        detail: one line saying why, e.g. ``"AssertionError"`` or ``"wall-clock limit of 3 s"``.
        isolation: ``namespace`` or ``process`` (see :func:`selectbench.evaluate.sandbox.describe`).
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    detail: str = ""
    isolation: str = ""


def run_child(
    source: str,
    *,
    timeout_s: float,
    limits: dict[str, int],
    mode: str,
    guard: bool,
    with_notes: bool = False,
) -> Any:
    """Run ``source`` in the given mode; tests call this directly to check the kernel layer with the guard off."""
    base = Path(tempfile.mkdtemp(prefix=f"{MARKER}-"))
    try:
        work = base / "work"
        work.mkdir(mode=0o700)
        program = base / "program.py"
        program.write_text(source, encoding="utf-8")
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(work),
            "TMPDIR": str(work),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "OMP_NUM_THREADS": "1",
        }
        with (
            open(program, "rb") as stdin,
            open(base / "stdout", "wb") as out,
            open(base / "stderr", "wb") as err,
            open(base / "status", "wb") as status,
        ):
            # pass_fds keeps the descriptor's number in the child, so the child is told that number.
            config = {"mode": mode, "workdir": str(work), "guard": guard, "status_fd": status.fileno(), **limits}
            config.update(pid_max=PID_MAX, workdir_mb=WORKDIR_MB)
            argv = [sys.executable, "-I", str(CHILD), MARKER, json.dumps(config)]
            if mode == "namespace":
                namespaces = ["--user", "--map-root-user", "--net", "--pid", "--mount", "--ipc", "--uts"]
                argv = ["unshare", *namespaces, "--fork", "--kill-child", *argv]
            start = time.monotonic()
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=stdin,
                    stdout=out,
                    stderr=err,
                    pass_fds=(status.fileno(),),
                    cwd=work,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                result = SandboxResult("error", None, "", "", 0.0, f"could not start the sandbox: {exc}", mode)
                return (result, {}) if with_notes else result
            timed_out = not wait_then_kill_group(proc, timeout_s)
            returncode = proc.wait()
            duration = time.monotonic() - start
        lines = (base / "status").read_text(encoding="utf-8", errors="replace").split("\n")
        host_pid = next((line.split()[1] for line in lines if line.startswith("host-pid ")), "")
        if host_pid.isdigit():
            await_namespace_end(int(host_pid))
        stdout = tail(base / "stdout")
        stderr = tail(base / "stderr")
        result = verdict(mode, lines, returncode, timed_out, timeout_s, limits, stdout, stderr, duration)
        notes = {line.split(" ", 2)[1]: True for line in lines if line.startswith("note ")}
        return (result, notes) if with_notes else result
    finally:
        remove_tree(base)


def wait_then_kill_group(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the child to exit, then kill its whole process group; True if it exited.

    The group is killed while the child is still an unreaped zombie, so its process-group id cannot have been
    reused by an unrelated process group. This also removes anything the program left running in the group.
    """
    deadline = time.monotonic() + timeout_s
    exited = False
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(proc.pid)
    try:
        if pidfd is not None:
            exited = bool(select.select([pidfd], [], [], timeout_s)[0])
        else:
            delay = 0.001
            while time.monotonic() < deadline:
                info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                if info is not None:
                    exited = True
                    break
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if pidfd is not None:
            os.close(pidfd)
    return exited


def await_namespace_end(init_pid: int, limit_s: float = 10.0) -> None:
    """Wait until a killed namespace's init has finished: the kernel ends it only after every process inside it.

    Killing ``unshare`` kills the init asynchronously; without this wait a sample's processes could outlive
    :func:`run_program` by a moment.
    """
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{init_pid}/stat").read_text()
        except OSError:
            return
        if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
            return
        time.sleep(0.01)


def verdict(
    mode: str,
    lines: list[str],
    returncode: int,
    timed_out: bool,
    timeout_s: float,
    limits: dict[str, int],
    stdout: str,
    stderr: str,
    duration: float,
) -> SandboxResult:
    """Turn the exit status and the status-channel lines into a :class:`SandboxResult`."""
    ready, done = _READY in lines, _DONE in lines
    # In namespace mode the namespace's init reports the program's real exit status ("exit N" / "signal N").
    for line in lines:
        if line.startswith("exit "):
            returncode = int(line.split()[1])
        elif line.startswith("signal "):
            returncode = -int(line.split()[1])
    setup_error = next((line[len("setup-error ") :] for line in lines if line.startswith("setup-error ")), "")

    def result(status: str, detail: str, rc: int | None = returncode) -> SandboxResult:
        return SandboxResult(status, rc, stdout, stderr, round(duration, 4), detail, mode)

    if timed_out:
        return result("timeout", f"wall-clock limit of {timeout_s:g} s", None)
    if not ready:
        why = setup_error or last_line(stderr) or f"exit status {returncode}"
        return result("error", f"the sandbox could not start the program: {why}")
    if returncode == -signal.SIGXCPU:
        return result("timeout", f"CPU-time limit of {limits['cpu_s']} s")
    if returncode == 0 and done:
        return result("passed", "")
    if returncode == 0:
        return result("failed", "the program exited before its end (sys.exit or os._exit)")
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        why = {"SIGXFSZ": f"file-size limit of {limits['file_mb']} MiB"}.get(name, f"killed by {name}")
        return result("failed", why)
    return result("failed", last_line(stderr) or f"exit status {returncode}")


def last_line(text: str) -> str:
    """The last non-blank line of ``text``, stripped and cut to 300 characters ("" if none)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def tail(path: Path) -> str:
    """The last ``TAIL_CHARS`` characters of a captured output file (read from its end, so a huge file is cheap)."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 4 * TAIL_CHARS))
        text = handle.read().decode("utf-8", errors="replace")
    return text[-TAIL_CHARS:]


def remove_tree(path: Path) -> None:
    """Remove the sample's folder even if the program made parts of it read-only."""

    def fix_and_retry(func: Any, target: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), 0o700)
            if os.path.isdir(target) and not os.path.islink(target):
                os.chmod(target, 0o700)
        with contextlib.suppress(FileNotFoundError):
            func(target)

    shutil.rmtree(path, onerror=fix_and_retry)
