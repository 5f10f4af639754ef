"""The sandbox's child module on its own: it is standalone, and its pure pieces (limits, path checks) are right."""

from __future__ import annotations

import ast
import os
import resource
import sys
from pathlib import Path

from selectbench.evaluate import sandbox_child, sandbox_process
from selectbench.evaluate.sandbox_child import (
    clamp,
    count_tasks,
    other_process_entry,
    resolve,
    rlimit_plan,
    tmpfs_options,
    within,
    writes,
)

CFG = {"mode": "process", "memory_mb": 512, "cpu_s": 4, "file_mb": 16, "open_files": 256, "extra_tasks": 64}


def test_child_is_the_file_the_sandbox_runs_and_imports_only_the_standard_library() -> None:
    assert Path(sandbox_child.__file__).resolve() == sandbox_process.CHILD.resolve()
    tree = ast.parse(sandbox_process.CHILD.read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported and imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


def test_rlimit_plan_bounds_processes_per_namespace_or_over_the_users_tasks() -> None:
    mib = 1024 * 1024
    plan = dict(rlimit_plan(CFG))
    assert plan == {
        "RLIMIT_AS": 512 * mib,
        "RLIMIT_CPU": (4, 5),
        "RLIMIT_FSIZE": 16 * mib,
        "RLIMIT_CORE": 0,
        "RLIMIT_NOFILE": 256,
    }  # process mode as root (no task count): the kernel would not apply RLIMIT_NPROC, so none is set
    assert dict(rlimit_plan(CFG, tasks_now=10))["RLIMIT_NPROC"] == 74
    assert dict(rlimit_plan({**CFG, "mode": "namespace"}, tasks_now=10))["RLIMIT_NPROC"] == 64
    assert all(hasattr(resource, name) for name in plan)


def test_clamp_never_raises_a_limit_above_the_hard_limit_in_force() -> None:
    inf = resource.RLIM_INFINITY
    assert clamp(100, inf, inf) == (100, 100)
    assert clamp((4, 5), inf, inf) == (4, 5)
    assert clamp((4, 5), 3, inf) == (3, 3)
    assert clamp(100, 50, inf) == (50, 50)


def test_count_tasks_adds_the_threads_of_the_users_processes(tmp_path: Path) -> None:
    for pid, uid, threads in (("1", 0, 3), ("20", 1000, 2), ("21", 1000, 5)):
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nThreads:\t{threads}\n")
    (tmp_path / "self").mkdir()  # not a process folder
    (tmp_path / "99").mkdir()  # a process that ended: no status file
    assert count_tasks(1000, str(tmp_path)) == 7
    assert count_tasks(0, str(tmp_path)) == 3
    assert count_tasks(os.getuid()) >= 1  # the real /proc holds at least this process


def test_path_checks_confine_writes_to_the_working_folder(tmp_path: Path) -> None:
    root = os.path.realpath(tmp_path)
    (tmp_path / "sub").mkdir()
    os.symlink("/etc", tmp_path / "out")
    real = (os.path.realpath, os.readlink)
    assert within(resolve(str(tmp_path / "sub" / "f.txt"), None, True, *real), root)
    assert within(root, root) and not within(root + "-other/x", root)
    assert not within(resolve(str(tmp_path / "out" / "passwd"), None, True, *real), root)  # through a symlink
    # Not followed (unlink, rename): the link itself is inside, whatever it points to.
    assert within(resolve(str(tmp_path / "out"), None, False, *real), root)
    fd = os.open(tmp_path / "sub", os.O_RDONLY)
    try:
        assert resolve("f.txt", fd, True, *real) == os.path.join(root, "sub", "f.txt")
        assert resolve(fd, None, True, *real) == os.path.join(root, "sub")
    finally:
        os.close(fd)


def test_other_processes_proc_entries_are_recognised() -> None:
    own = ("/proc/self", "/proc/thread-self", "/proc/42")
    assert other_process_entry("/proc/1/environ", own)
    assert not other_process_entry("/proc/42/status", own)
    assert not other_process_entry("/proc/self/status", own)
    assert not other_process_entry("/proc/meminfo", own)
    assert not other_process_entry("/home/proc/1", own)


def test_open_modes_that_write_and_the_tmpfs_options() -> None:
    assert [writes(m) for m in ("r", "rb", "w", "a", "x", "r+", "wb")] == [False, False, True, True, True, True, True]
    assert tmpfs_options(64) == "size=64m,nr_inodes=4096,mode=0700"
