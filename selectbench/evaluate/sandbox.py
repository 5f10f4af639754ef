"""Run untrusted Python programs (model-written code) in throw-away, resource-limited child processes.

Kernel isolation (namespaces, rlimits) where the machine allows it, plus an always-on Python-level guard: describe().
This module holds the API, the limits and the choice of isolation; :mod:`sandbox_process` starts and judges one
child, and :mod:`sandbox_child` is the code the child runs.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import Any

from selectbench.errors import SelectbenchError
from selectbench.evaluate.sandbox_process import PID_MAX, WORKDIR_MB, SandboxResult, last_line, run_child

#: Environment variable that picks the isolation: ``auto`` (default), ``namespace`` or ``process``.
MODE_ENV = "SELECTBENCH_SANDBOX"
MODES = ("auto", "namespace", "process")

#: Largest single file the program may write (RLIMIT_FSIZE); also bounds its captured stdout and stderr.
FILE_SIZE_MB = 16
#: Open files per process (RLIMIT_NOFILE); with FILE_SIZE_MB it also bounds memory held in unlinked files.
OPEN_FILES = 256
#: Processes and threads a sample may run (RLIMIT_NPROC; the kernel does not apply it to root, see describe()).
EXTRA_TASKS = 64


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
    return run_child(source, timeout_s=timeout_s, limits=limits, mode=isolation(), guard=True)


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
    result, notes = run_child(
        "print('ok')", timeout_s=20.0, limits=limits, mode="namespace", guard=True, with_notes=True
    )
    if result.status == "passed" and result.stdout.strip() == "ok":
        return True, "", {"pid_max": "pid_max" not in notes}
    return False, result.detail or last_line(result.stderr) or result.status, {}
