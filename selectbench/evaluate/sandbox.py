"""Run untrusted Python programs (model-written code) in throw-away, resource-limited child processes.

Kernel isolation (namespaces, rlimits) where the machine allows it, plus an always-on Python-level guard: describe().
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectbench.errors import SelectbenchError

#: Environment variable that picks the isolation: ``auto`` (default), ``namespace`` or ``process``.
MODE_ENV = "SELECTBENCH_SANDBOX"
MODES = ("auto", "namespace", "process")

#: Largest single file the program may write (RLIMIT_FSIZE); also bounds its captured stdout and stderr.
FILE_SIZE_MB = 16
#: Size of the in-memory working folder in namespace mode (a tmpfs, gone when the sample ends).
WORKDIR_MB = 64
#: Open files per process (RLIMIT_NOFILE); with FILE_SIZE_MB it also bounds memory held in unlinked files.
OPEN_FILES = 256
#: Processes and threads a sample may run (RLIMIT_NPROC; the kernel does not apply it to root, see describe()).
EXTRA_TASKS = 64
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
        isolation: ``namespace`` or ``process`` (see :func:`describe`).
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    detail: str = ""
    isolation: str = ""


def run_program(
    source: str, *, timeout_s: float = 10.0, memory_mb: int = 1024, cpu_s: float | None = None
) -> SandboxResult:
    """Run a Python program in its own sandboxed process and report how it ended.

    The program runs as ``__main__`` in a fresh ``python -I`` interpreter whose working folder, ``HOME`` and
    ``TMPDIR`` are a new empty folder, removed afterwards; stdin is empty and the evaluator's environment (API keys
    included) is not passed on. See :func:`describe` for what is enforced and how.

    Args:
        source: the program text.
        timeout_s: wall-clock limit; at the limit every process of the sample is killed (status ``timeout``).
        memory_mb: address-space limit per process (RLIMIT_AS); an allocation beyond it raises MemoryError.
        cpu_s: CPU-time limit (RLIMIT_CPU); default ``ceil(timeout_s) + 1``.

    Returns:
        A :class:`SandboxResult`; a failing or hostile program never raises here.

    Raises:
        SelectbenchError: bad limits, or ``SELECTBENCH_SANDBOX=namespace`` on a machine without namespaces.
    """
    limits = _limits(timeout_s, memory_mb, cpu_s)
    return _run(source, timeout_s=timeout_s, limits=limits, mode=isolation(), guard=True)


def run_many(sources: Sequence[str], *, workers: int = 2, progress: bool = True, **limits: Any) -> list[SandboxResult]:
    """Run many programs, ``workers`` at a time, each in its own sandbox; results come back in input order.

    Args:
        sources: program texts.
        workers: programs running at once (each is a separate process; threads here only wait on them).
        progress: show a progress bar on stderr.
        **limits: ``timeout_s``, ``memory_mb``, ``cpu_s`` as in :func:`run_program`.
    """
    unknown = sorted(set(limits) - {"timeout_s", "memory_mb", "cpu_s"})
    if unknown:
        raise SelectbenchError(f"run_many: unknown limit(s) {unknown}; valid: cpu_s, memory_mb, timeout_s")
    if workers < 1:
        raise SelectbenchError(f"run_many: workers must be >= 1, got {workers}")
    _limits(**limits)  # bad limits fail here, once, not in every worker
    if not sources:
        return []
    isolation()  # probe once before the threads start, so a fallback warning is given once
    from concurrent.futures import ThreadPoolExecutor, as_completed

    results: list[SandboxResult | None] = [None] * len(sources)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(sources), desc="running programs", unit="prog", file=sys.stderr, mininterval=0.5)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = {pool.submit(run_program, source, **limits): i for i, source in enumerate(sources)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if bar is not None:
                bar.update(1)
    except BaseException:
        # Ctrl-C or an error: start nothing new; running programs end at their own time limits.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    pool.shutdown()
    return [r for r in results if r is not None]


def _limits(timeout_s: float = 10.0, memory_mb: int = 1024, cpu_s: float | None = None) -> dict[str, int]:
    if not timeout_s > 0 or memory_mb < 64 or (cpu_s is not None and not cpu_s > 0):
        raise SelectbenchError(
            f"sandbox limits: expected timeout_s > 0, memory_mb >= 64 and cpu_s > 0 or None; "
            f"got timeout_s={timeout_s}, memory_mb={memory_mb}, cpu_s={cpu_s}"
        )
    return {
        "memory_mb": int(memory_mb),
        "cpu_s": math.ceil(cpu_s) if cpu_s is not None else math.ceil(timeout_s) + 1,
        "file_mb": FILE_SIZE_MB,
        "open_files": OPEN_FILES,
        "extra_tasks": EXTRA_TASKS,
    }


# --------------------------------------------------------------------------------------------------------------
# Isolation modes


_probe_lock = threading.Lock()
_probed: dict[str, Any] = {}


def isolation() -> str:
    """The isolation in force here: ``namespace`` or ``process`` (``$SELECTBENCH_SANDBOX``, else probed once)."""
    wanted = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if wanted not in MODES:
        raise SelectbenchError(f"${MODE_ENV}={wanted!r} is not a sandbox mode; valid: {', '.join(MODES)}")
    if wanted == "process":
        return "process"
    ok, reason = _namespace_support()
    if ok:
        return "namespace"
    if wanted == "namespace":
        raise SelectbenchError(
            f"${MODE_ENV}=namespace, but this machine cannot create the sandbox's namespaces: {reason}\n"
            f"  Allow unprivileged user namespaces, or set {MODE_ENV}=process (weaker, see selectbench docs)."
        )
    with _probe_lock:
        if not _probed.get("warned"):
            _probed["warned"] = True
            warnings.warn(
                f"selectbench sandbox: kernel namespaces are unavailable ({reason}); generated code runs with "
                "rlimits and a Python-level guard only, which is not a security boundary",
                stacklevel=3,
            )
    return "process"


def describe() -> dict[str, str]:
    """What the sandbox enforces on this machine, per concern, for a run's meta.json and for users.

    Namespace mode (``unshare`` of user, PID, network, mount, IPC and UTS namespaces; needs unprivileged user
    namespaces) enforces in the kernel: no network (an empty network namespace), a read-only view of every
    file system except the working folder (a size-limited tmpfs), no view of or signals to processes outside the
    sample (own PID namespace with its own /proc), the whole process tree killed at the time limit (the namespace's
    init dies), no capabilities and no new namespaces (so none of this can be undone from inside). Process mode
    (the fallback) has only the process-group kill, the rlimits and the Python-level guard for the rest.

    The Python-level guard (always on) replaces ``socket``, ``os.kill``/``killpg``, process creation (``fork``,
    ``subprocess``, ``os.system``, ``exec*``, ``spawn*``, ``setsid``) and file-changing calls that target paths
    outside the working folder with functions that raise ``PermissionError``, and blocks ``ctypes`` and
    ``resource``. It is not a security boundary: Python code can reach the original functions (for example through
    the guard functions' closures), so deliberately hostile code can bypass it. It stops accidents and naive attacks.
    """
    mode = isolation()
    probe = _probed.get("notes", {})
    root = os.geteuid() == 0
    if mode == "namespace":
        fork = (
            f"RLIMIT_NPROC {EXTRA_TASKS} (per sample, kernel)"
            if not root
            else "RLIMIT_NPROC does not apply to root; "
            + (f"PID namespace pid_max {PID_MAX} (kernel)" if probe.get("pid_max") else "Python guard only")
        )
        return {
            "mode": "namespace",
            "network": "none: empty network namespace (kernel)",
            "filesystem": f"read-only except the working folder, a {WORKDIR_MB} MiB tmpfs (kernel, mount namespace)",
            "processes": "own PID namespace and /proc: cannot see or signal other processes (kernel)",
            "timeout": "wall-clock kill of the namespace's init, which kills every process in it (kernel)",
            "memory": "RLIMIT_AS per process (kernel)",
            "cpu": "RLIMIT_CPU (kernel)",
            "fork_bomb": fork,
            "guard": "Python-level guard (not a security boundary)",
        }
    return {
        "mode": "process",
        "network": "Python guard only (socket replaced); not enforced by the kernel",
        "filesystem": "Python guard only (writes outside the working folder refused); not enforced by the kernel",
        "processes": "own session and process group; os.kill/killpg refused by the Python guard only",
        "timeout": "wall-clock kill of the process group (a process that leaves the group can outlive it)",
        "memory": "RLIMIT_AS per process (kernel)",
        "cpu": "RLIMIT_CPU (kernel)",
        "fork_bomb": "Python guard; RLIMIT_NPROC counts all of this user's processes"
        + (" and does not apply to root" if root else ""),
        "guard": "Python-level guard (not a security boundary)",
    }


def _namespace_support() -> tuple[bool, str]:
    """Probe once whether namespace mode works here, by running a trivial program in it."""
    with _probe_lock:
        if "ok" not in _probed:
            ok, reason, notes = _probe_namespace()
            _probed.update(ok=ok, reason=reason, notes=notes)
        return _probed["ok"], _probed["reason"]


def _probe_namespace() -> tuple[bool, str, dict[str, bool]]:
    if not sys.platform.startswith("linux"):
        return False, f"not Linux ({sys.platform})", {}
    if shutil.which("unshare") is None:
        return False, "the `unshare` program (util-linux) is not installed", {}
    limits = {"memory_mb": 512, "cpu_s": 10, "file_mb": 1, "open_files": 64, "extra_tasks": 8}
    result, notes = _run("print('ok')", timeout_s=20.0, limits=limits, mode="namespace", guard=True, with_notes=True)
    if result.status == "passed" and result.stdout.strip() == "ok":
        return True, "", {"pid_max": "pid_max" not in notes}
    return False, result.detail or _last_line(result.stderr) or result.status, {}


# --------------------------------------------------------------------------------------------------------------
# Running one program


def _run(
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
            timed_out = not _wait_then_kill_group(proc, timeout_s)
            returncode = proc.wait()
            duration = time.monotonic() - start
        lines = (base / "status").read_text(encoding="utf-8", errors="replace").split("\n")
        host_pid = next((line.split()[1] for line in lines if line.startswith("host-pid ")), "")
        if host_pid.isdigit():
            _await_namespace_end(int(host_pid))
        stdout = _tail(base / "stdout")
        stderr = _tail(base / "stderr")
        result = _verdict(mode, lines, returncode, timed_out, timeout_s, limits, stdout, stderr, duration)
        notes = {line.split(" ", 2)[1]: True for line in lines if line.startswith("note ")}
        return (result, notes) if with_notes else result
    finally:
        _remove_tree(base)


def _wait_then_kill_group(proc: subprocess.Popen, timeout_s: float) -> bool:
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


def _await_namespace_end(init_pid: int, limit_s: float = 10.0) -> None:
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


def _verdict(
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
        why = setup_error or _last_line(stderr) or f"exit status {returncode}"
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
    return result("failed", _last_line(stderr) or f"exit status {returncode}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _tail(path: Path) -> str:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 4 * TAIL_CHARS))
        text = handle.read().decode("utf-8", errors="replace")
    return text[-TAIL_CHARS:]


def _remove_tree(path: Path) -> None:
    """Remove the sample's folder even if the program made parts of it read-only."""

    def fix_and_retry(func: Any, target: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), 0o700)
            if os.path.isdir(target) and not os.path.islink(target):
                os.chmod(target, 0o700)
        with contextlib.suppress(FileNotFoundError):
            func(target)

    shutil.rmtree(path, onerror=fix_and_retry)
