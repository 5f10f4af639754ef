"""The sandbox's child process: sets up the sandbox, then runs the untrusted program (``python -I`` runs this file).

Standard library only and no selectbench import: the child is a fresh isolated interpreter inside the sample's
namespaces, where the project may not be readable. It is started by :mod:`selectbench.evaluate.sandbox` as
``python -I sandbox_child.py MARKER CONFIG_JSON`` with the program on stdin. It
  1. reads the program from stdin (a file), then points stdin at /dev/null;
  2. namespace mode: mounts a fresh /proc, forbids new user namespaces, makes every mount read-only, mounts a
     tmpfs as the working folder, drops all capabilities, then forks: pid 1 waits and reports the program's exit
     status on the status channel, pid 2 runs the program;
  3. sets the rlimits, installs the Python-level guard, writes "ready", runs the program as __main__, and writes
     "done" only if the program reached its end.
The status channel is the inherited descriptor ``status_fd``; its lines are ``host-pid N``, ``note WHAT``,
``setup-error MESSAGE``, ``ready``, ``done`` and, from a namespace's init, ``exit N`` or ``signal N``.

Imports beyond json, os and sys stay inside the functions that need them: every module imported here is one the
program finds already loaded (and the guard imports socket and subprocess only when it is on).
"""

import builtins
import json
import os
import sys


def say(status_fd: int, line: str) -> None:
    """Write one line on the status channel."""
    os.write(status_fd, (line + "\n").encode())


def fail_setup(status_fd: int, message: str) -> None:
    """Report that the sandbox could not be set up (on the channel and stderr) and end the child with status 97."""
    say(status_fd, "setup-error " + message.replace("\n", " "))
    os.write(2, ("selectbench sandbox setup failed: " + message + "\n").encode())
    os._exit(97)


def tmpfs_options(workdir_mb: int) -> str:
    """The mount options of the working folder's tmpfs."""
    return f"size={workdir_mb}m,nr_inodes=4096,mode=0700"


def namespace_setup(cfg: dict, status_fd: int) -> None:
    """Inside fresh namespaces: own /proc, no nested user namespaces, read-only mounts, a tmpfs working folder,
    no capabilities."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

    def check(rc, what):
        if rc != 0:
            err = ctypes.get_errno()
            fail_setup(status_fd, what + ": " + os.strerror(err))

    def enc(s):
        return None if s is None else s.encode()

    def mount(src, target, fstype, flags, data=None):
        check(libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), "mount " + target)

    MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 16384, 1 << 18
    # The host's /proc still resolves "self" to our pid outside the namespace; the evaluator waits on it after a kill.
    say(status_fd, "host-pid " + os.readlink("/proc/self"))
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # A /proc of our own PID namespace: the program sees only its own processes (not the evaluator's environ).
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # No nested user namespaces: without them the program can never regain capabilities to undo the mounts.
    try:
        with open("/proc/sys/user/max_user_namespaces", "w") as handle:
            handle.write("0")
    except OSError as exc:
        fail_setup(status_fd, "cannot forbid nested user namespaces: " + str(exc))
    # Per-namespace pid_max (kernel >= 6.14) bounds a fork bomb even for root, whom RLIMIT_NPROC exempts.
    try:
        with open("/proc/sys/kernel/pid_max", "w") as handle:
            handle.write(str(cfg["pid_max"]))
    except OSError:
        say(status_fd, "note pid_max unavailable")

    class MountAttr(ctypes.Structure):
        _fields_ = [
            ("attr_set", ctypes.c_uint64),
            ("attr_clr", ctypes.c_uint64),
            ("propagation", ctypes.c_uint64),
            ("userns_fd", ctypes.c_uint64),
        ]

    attr = MountAttr(1, 0, 0, 0)  # MOUNT_ATTR_RDONLY
    AT_FDCWD, AT_RECURSIVE, SYS_MOUNT_SETATTR = -100, 0x8000, 442  # the same number on every architecture
    args = [
        ctypes.c_long(SYS_MOUNT_SETATTR),
        ctypes.c_long(AT_FDCWD),
        ctypes.c_char_p(b"/"),
        ctypes.c_long(AT_RECURSIVE),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    ]
    check(libc.syscall(*args), "read-only remount (mount_setattr, kernel >= 5.12)")
    mount("tmpfs", cfg["workdir"], "tmpfs", MS_NOSUID | MS_NODEV, tmpfs_options(cfg["workdir_mb"]))
    os.chdir(cfg["workdir"])
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
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    check(libc.capset(ctypes.byref(CapHeader(0x20080522, 0)), (CapData * 2)()), "capset")


def init_wait(status_fd: int, child: int) -> None:
    """Be pid 1 of the namespace: wait for the program, report its exit status, exit with it."""
    # When pid 1 exits, the kernel kills every process left in the namespace.
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        say(status_fd, f"signal {os.WTERMSIG(status)}")
        os._exit(128 + os.WTERMSIG(status))
    code = os.WEXITSTATUS(status)
    say(status_fd, f"exit {code}")
    os._exit(code)


def rlimit_plan(cfg: dict, tasks_now: int | None = None) -> list[tuple[str, int | tuple[int, int]]]:
    """The rlimits to set, as ``(resource name, value or (soft, hard))``.

    Args:
        cfg: the child's config (``mode``, ``memory_mb``, ``cpu_s``, ``file_mb``, ``open_files``, ``extra_tasks``).
        tasks_now: in process mode and not root, the processes and threads this user runs now (RLIMIT_NPROC counts
            them all); None: no RLIMIT_NPROC outside namespace mode (the kernel does not apply it to root).
    """
    mib = 1024 * 1024
    plan: list[tuple[str, int | tuple[int, int]]] = [
        ("RLIMIT_AS", cfg["memory_mb"] * mib),
        ("RLIMIT_CPU", (cfg["cpu_s"], cfg["cpu_s"] + 1)),
        ("RLIMIT_FSIZE", cfg["file_mb"] * mib),
        ("RLIMIT_CORE", 0),
        ("RLIMIT_NOFILE", cfg["open_files"]),
    ]
    if cfg["mode"] == "namespace":
        # Counted per user namespace: only this sample's processes.
        plan.append(("RLIMIT_NPROC", cfg["extra_tasks"]))
    elif tasks_now is not None:
        # Counted over every process of this user: allow what exists now plus the extra.
        plan.append(("RLIMIT_NPROC", tasks_now + cfg["extra_tasks"]))
    return plan


def clamp(value: int | tuple[int, int], old_hard: int, infinity: int) -> tuple[int, int]:
    """``(soft, hard)`` for a limit ``value``, never above the hard limit already in force (which cannot rise)."""
    soft, hard = value if isinstance(value, tuple) else (value, value)
    if old_hard != infinity:
        soft, hard = min(soft, old_hard), min(hard, old_hard)
    return soft, hard


def set_limits(cfg: dict) -> None:
    """Set the rlimits of :func:`rlimit_plan`."""
    import resource

    tasks_now = count_tasks(os.getuid()) if cfg["mode"] != "namespace" and os.geteuid() != 0 else None
    for name, value in rlimit_plan(cfg, tasks_now):
        which = getattr(resource, name)
        _, old_hard = resource.getrlimit(which)
        resource.setrlimit(which, clamp(value, old_hard, resource.RLIM_INFINITY))


def count_tasks(uid: int, proc: str = "/proc") -> int:
    """Threads of every process of user ``uid`` (the unit RLIMIT_NPROC counts), read from ``proc``."""
    total = 0
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1 ").split()[0]) == uid:
            total += int(fields.get("Threads", "1"))
    return total


# ------------------------------------------------------------------------------------------ the Python-level guard


def resolve(path: object, dir_fd: object, follow: bool, realpath, readlink) -> str:
    """The absolute path a call on ``path`` (relative to ``dir_fd``) reaches.

    ``realpath`` and ``readlink`` are the original functions, taken before the program could replace them.
    """
    if isinstance(path, int):
        return readlink(f"/proc/self/fd/{path:d}")
    path = os.fsdecode(path)
    if dir_fd is not None and not path.startswith("/"):
        # %d, not an f-string: the same conversion (and the same errors) for whatever the program passed.
        path = readlink("/proc/self/fd/%d" % dir_fd) + "/" + path  # noqa: UP031
    if follow:
        return realpath(path)
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(realpath(head), tail)


def within(target: str, root: str) -> bool:
    """Whether absolute path ``target`` is ``root`` or below it."""
    return target == root or target.startswith(root + "/")


def other_process_entry(target: str, own_proc: tuple[str, ...]) -> bool:
    """Whether absolute path ``target`` is inside another process's ``/proc/PID`` (``own_proc``: this one's)."""
    parts = target.split("/")
    return len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and "/".join(parts[:3]) not in own_proc


def writes(mode: object) -> bool:
    """Whether an ``open`` mode can change the file."""
    return any(c in str(mode) for c in "wax+")


def install_guard(workdir: str) -> None:
    """Replace the file, process, signal and network functions with guarded ones (see sandbox.describe)."""
    import _io
    import _posixsubprocess
    import _socket
    import io
    import posix
    import signal
    import socket
    import subprocess

    root = os.path.realpath(workdir)
    real = {name: getattr(os, name) for name in dir(os) if callable(getattr(os, name))}
    realpath, readlink, getpid = os.path.realpath, os.readlink, os.getpid

    def deny(what):
        raise PermissionError(what + " is disabled in the selectbench sandbox")

    def inside(path, dir_fd=None, follow=True):
        if isinstance(path, int) and dir_fd is None:
            return True  # a descriptor the program already holds: it was checked when it was opened
        try:
            target = resolve(path, dir_fd, follow, realpath, readlink)
        except (OSError, TypeError, ValueError):
            return False
        return within(target, root)

    own_proc = ("/proc/self", "/proc/thread-self", f"/proc/{getpid()}")

    def check_read(what, path):
        # Other processes' /proc entries (the evaluator's environ holds API keys) are off limits.
        if isinstance(path, int):
            return
        try:
            target = os.path.abspath(os.fsdecode(path))
        except (TypeError, ValueError):
            return
        if other_process_entry(target, own_proc):
            raise PermissionError(f"{what}({path!r}): other processes are off limits in the selectbench sandbox")

    def check(what, path, dir_fd=None, follow=True):
        if not inside(path, dir_fd, follow):
            raise PermissionError(
                f"{what}({path!r}): writing outside the working folder is disabled in the selectbench sandbox"
            )

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
    for name in (
        "fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp", "setsid", "setpgid", "setpgrp",
        "killpg", "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnl",
        "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "pidfd_open", "setuid",
        "setgid", "setresuid", "setresgid", "chroot", "plock",
    ):  # fmt: skip
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
        if writes(mode):
            check("open", file)
        return real_open(file, mode, *args, **kwargs)

    class GuardedFileIO(_io.FileIO):
        def __init__(self, file, mode="r", *args, **kwargs):
            check_read("FileIO", file)
            if writes(mode):
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


def main(argv: list[str]) -> None:
    """Set up the sandbox described by ``argv[2]`` (JSON) and run the program read from stdin; never returns."""
    cfg = json.loads(argv[2])
    status_fd = cfg["status_fd"]
    source = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.set_inheritable(status_fd, False)
    if cfg["mode"] == "namespace":
        namespace_setup(cfg, status_fd)
        child = os.fork()
        if child:
            init_wait(status_fd, child)
    try:
        set_limits(cfg)
    except (OSError, ValueError) as exc:
        fail_setup(status_fd, "rlimits: " + str(exc))
    if cfg["guard"]:
        install_guard(cfg["workdir"])
    # The program gets a fresh __main__ module, not this file's globals.
    main_module = type(sys)("__main__")
    main_module.__builtins__ = builtins
    sys.modules["__main__"] = main_module
    sys.argv = ["<program>"]
    say(status_fd, "ready")
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
    say(status_fd, "done")
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
