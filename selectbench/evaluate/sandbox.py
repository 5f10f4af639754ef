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
            # pass_fds keeps the descriptor's number in the child, so the bootstrap is told that number.
            config = {"mode": mode, "workdir": str(work), "guard": guard, "status_fd": status.fileno(), **limits}
            config.update(pid_max=PID_MAX, workdir_mb=WORKDIR_MB)
            argv = [sys.executable, "-I", "-c", _BOOTSTRAP, MARKER, json.dumps(config)]
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


# --------------------------------------------------------------------------------------------------------------
# The bootstrap: runs inside the child before the program. Standard library only, because the child runs
# `python -I` and must not depend on this package being importable. It
#   1. reads the program from stdin (a file), then points stdin at /dev/null;
#   2. namespace mode: mounts a fresh /proc, forbids new user namespaces, makes every mount read-only, mounts a
#      tmpfs as the working folder, drops all capabilities, then forks: pid 1 waits and reports the program's exit
#      status on the status channel, pid 2 runs the program;
#   3. sets the rlimits, installs the Python-level guard, writes "ready", runs the program as __main__, and writes
#      "done" only if the program reached its end.

_BOOTSTRAP = r"""
import json, os, sys

CFG = json.loads(sys.argv[2])
STATUS = CFG["status_fd"]
WORK = CFG["workdir"]


def say(line):
    os.write(STATUS, (line + "\n").encode())


def fail_setup(message):
    say("setup-error " + message.replace("\n", " "))
    os.write(2, ("selectbench sandbox setup failed: " + message + "\n").encode())
    os._exit(97)


def namespace_setup():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

    def check(rc, what):
        if rc != 0:
            err = ctypes.get_errno()
            fail_setup(what + ": " + os.strerror(err))

    def mount(src, target, fstype, flags, data=None):
        enc = lambda s: None if s is None else s.encode()
        check(libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), "mount " + target)

    MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 16384, 1 << 18
    # The host's /proc still resolves "self" to our pid outside the namespace; the evaluator waits on it after a kill.
    say("host-pid " + os.readlink("/proc/self"))
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # A /proc of our own PID namespace: the program sees only its own processes (not the evaluator's environ).
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # No nested user namespaces: without them the program can never regain capabilities to undo the mounts.
    try:
        with open("/proc/sys/user/max_user_namespaces", "w") as handle:
            handle.write("0")
    except OSError as exc:
        fail_setup("cannot forbid nested user namespaces: " + str(exc))
    # Per-namespace pid_max (kernel >= 6.14) bounds a fork bomb even for root, whom RLIMIT_NPROC exempts.
    try:
        with open("/proc/sys/kernel/pid_max", "w") as handle:
            handle.write(str(CFG["pid_max"]))
    except OSError:
        say("note pid_max unavailable")

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    attr = MountAttr(1, 0, 0, 0)  # MOUNT_ATTR_RDONLY
    AT_FDCWD, AT_RECURSIVE, SYS_MOUNT_SETATTR = -100, 0x8000, 442  # the same number on every architecture
    args = [ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_long(AT_FDCWD), ctypes.c_char_p(b"/"),
            ctypes.c_long(AT_RECURSIVE), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))]
    check(libc.syscall(*args), "read-only remount (mount_setattr, kernel >= 5.12)")
    size = "size=%dm,nr_inodes=4096,mode=0700" % CFG["workdir_mb"]
    mount("tmpfs", WORK, "tmpfs", MS_NOSUID | MS_NODEV, size)
    os.chdir(WORK)
    # Drop every capability (bounding, ambient, permitted, effective) and forbid regaining any through exec.
    with open("/proc/sys/kernel/cap_last_cap") as handle:
        last_cap = int(handle.read())
    for cap in range(last_cap + 1):
        check(libc.prctl(24, cap, 0, 0, 0), "drop capability bounding set")  # PR_CAPBSET_DROP
    check(libc.prctl(47, 4, 0, 0, 0), "clear ambient capabilities")  # PR_CAP_AMBIENT, _CLEAR_ALL
    check(libc.prctl(38, 1, 0, 0, 0), "set no_new_privs")  # PR_SET_NO_NEW_PRIVS

    class CapHeader(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class CapData(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    check(libc.capset(ctypes.byref(CapHeader(0x20080522, 0)), (CapData * 2)()), "capset")


def init_wait(child):
    # pid 1 of the namespace: when it exits, the kernel kills every process left in the namespace.
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        say("signal %d" % os.WTERMSIG(status))
        os._exit(128 + os.WTERMSIG(status))
    code = os.WEXITSTATUS(status)
    say("exit %d" % code)
    os._exit(code)


def set_limits():
    import resource

    mib = 1024 * 1024
    limits = [
        (resource.RLIMIT_AS, CFG["memory_mb"] * mib),
        (resource.RLIMIT_CPU, (CFG["cpu_s"], CFG["cpu_s"] + 1)),
        (resource.RLIMIT_FSIZE, CFG["file_mb"] * mib),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, CFG["open_files"]),
    ]
    if CFG["mode"] == "namespace":
        # Counted per user namespace: only this sample's processes.
        limits.append((resource.RLIMIT_NPROC, CFG["extra_tasks"]))
    elif os.geteuid() != 0:
        # Counted over every process of this user: allow what exists now plus the extra.
        limits.append((resource.RLIMIT_NPROC, count_tasks(os.getuid()) + CFG["extra_tasks"]))
    for which, value in limits:
        soft, hard = value if isinstance(value, tuple) else (value, value)
        old_soft, old_hard = resource.getrlimit(which)
        if old_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, old_hard), min(hard, old_hard)
        resource.setrlimit(which, (soft, hard))


def count_tasks(uid):
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/status" % name) as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1 ").split()[0]) == uid:
            total += int(fields.get("Threads", "1"))
    return total


def install_guard():
    import builtins, io, posix, signal, socket, subprocess, _io, _socket, _posixsubprocess

    root = os.path.realpath(WORK)
    real = {name: getattr(os, name) for name in dir(os) if callable(getattr(os, name))}
    realpath, readlink, getpid = os.path.realpath, os.readlink, os.getpid

    def deny(what):
        raise PermissionError(what + " is disabled in the selectbench sandbox")

    def resolve(path, dir_fd=None, follow=True):
        if isinstance(path, int):
            return readlink("/proc/self/fd/%d" % path)
        path = os.fsdecode(path)
        if dir_fd is not None and not path.startswith("/"):
            path = readlink("/proc/self/fd/%d" % dir_fd) + "/" + path
        if follow:
            return realpath(path)
        head, tail = os.path.split(os.path.abspath(path))
        return os.path.join(realpath(head), tail)

    def inside(path, dir_fd=None, follow=True):
        if isinstance(path, int) and dir_fd is None:
            return True  # a descriptor the program already holds: it was checked when it was opened
        try:
            target = resolve(path, dir_fd, follow)
        except (OSError, TypeError, ValueError):
            return False
        return target == root or target.startswith(root + "/")

    own_proc = ("/proc/self", "/proc/thread-self", "/proc/%d" % getpid())

    def check_read(what, path):
        # Other processes' /proc entries (the evaluator's environ holds API keys) are off limits.
        if isinstance(path, int):
            return
        try:
            target = os.path.abspath(os.fsdecode(path))
        except (TypeError, ValueError):
            return
        parts = target.split("/")
        if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and "/".join(parts[:3]) not in own_proc:
            raise PermissionError("%s(%r): other processes are off limits in the selectbench sandbox" % (what, path))

    def check(what, path, dir_fd=None, follow=True):
        if not inside(path, dir_fd, follow):
            raise PermissionError("%s(%r): writing outside the working folder is disabled in the selectbench "
                                  "sandbox" % (what, path))

    def denied(name):
        def function(*args, **kwargs):
            deny(name)
        function.__name__ = name
        return function

    def path_guard(name, positions=(0,), follow=True):
        original = real[name]

        def function(*args, **kwargs):
            dir_fd = kwargs.get("dir_fd")
            follows = follow and kwargs.get("follow_symlinks", True)
            for i in positions:
                if i < len(args):
                    fd = kwargs.get("dst_dir_fd" if i == 1 else "src_dir_fd", dir_fd)
                    check("os." + name, args[i], fd, follows)
            return original(*args, **kwargs)
        function.__name__ = name
        return function

    wrapped = {}
    for name in ("remove", "unlink", "rmdir", "mkdir", "symlink", "lchown"):
        wrapped[name] = path_guard(name, (1,) if name == "symlink" else (0,), follow=False)
    for name in ("rename", "replace", "link"):
        wrapped[name] = path_guard(name, (0, 1), follow=False)
    for name in ("chmod", "chown", "truncate", "utime", "mkfifo", "mknod", "setxattr", "removexattr", "chflags"):
        if name in real:
            wrapped[name] = path_guard(name)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    real_os_open = real["open"]

    def os_open(path, flags, *args, **kwargs):
        check_read("os.open", path)
        if flags & write_flags:
            check("os.open", path, kwargs.get("dir_fd"))
        return real_os_open(path, flags, *args, **kwargs)

    wrapped["open"] = os_open
    for name in ("fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp", "setsid", "setpgid",
                 "setpgrp", "killpg", "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp",
                 "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp",
                 "spawnvpe", "pidfd_open", "setuid", "setgid", "setresuid", "setresgid", "chroot", "plock"):
        if name in real:
            wrapped[name] = denied("os." + name)
    real_kill = real["kill"]

    def kill(pid, sig):
        if pid != getpid():
            deny("os.kill of another process")
        return real_kill(pid, sig)

    wrapped["kill"] = kill
    for name, function in wrapped.items():
        setattr(os, name, function)
        if hasattr(posix, name):
            setattr(posix, name, function)

    real_open = _io.open

    def guarded_open(file, mode="r", *args, **kwargs):
        check_read("open", file)
        if any(c in str(mode) for c in "wax+"):
            check("open", file)
        return real_open(file, mode, *args, **kwargs)

    class GuardedFileIO(_io.FileIO):
        def __init__(self, file, mode="r", *args, **kwargs):
            check_read("FileIO", file)
            if any(c in str(mode) for c in "wax+"):
                check("FileIO", file)
            super().__init__(file, mode, *args, **kwargs)

    builtins.open = io.open = _io.open = guarded_open
    io.FileIO = _io.FileIO = GuardedFileIO

    class NoSocket(_socket.socket):
        def __init__(self, *args, **kwargs):
            deny("network access (socket)")

    socket.socket = socket.SocketType = _socket.socket = _socket.SocketType = NoSocket
    for name in ("socketpair", "fromfd", "create_connection", "create_server", "getaddrinfo"):
        for module in (socket, _socket):
            if hasattr(module, name):
                setattr(module, name, denied("socket." + name))

    class NoPopen(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            deny("subprocess")

    subprocess.Popen = NoPopen
    _posixsubprocess.fork_exec = denied("_posixsubprocess.fork_exec")
    if hasattr(signal, "pidfd_send_signal"):
        signal.pidfd_send_signal = denied("signal.pidfd_send_signal")
    for name in ("ctypes", "_ctypes", "resource"):
        sys.modules[name] = None


def main():
    source = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.set_inheritable(STATUS, False)
    if CFG["mode"] == "namespace":
        namespace_setup()
        child = os.fork()
        if child:
            init_wait(child)
    try:
        set_limits()
    except (OSError, ValueError) as exc:
        fail_setup("rlimits: " + str(exc))
    if CFG["guard"]:
        install_guard()
    # The program gets a fresh __main__ module, not the bootstrap's globals.
    main_module = type(sys)("__main__")
    main_module.__builtins__ = __builtins__
    sys.modules["__main__"] = main_module
    sys.argv = ["<program>"]
    say("ready")
    try:
        exec(compile(source, "<program>", "exec"), main_module.__dict__)
    except SystemExit as exc:
        sys.stdout.flush()
        sys.stderr.flush()
        code = exc.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        os._exit(code or 0)
    except BaseException:
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    say("done")
    os._exit(0)


main()
"""
