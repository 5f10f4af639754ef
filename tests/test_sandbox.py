"""The code sandbox: hostile programs leave the host and the evaluator unharmed, limits hold, verdicts are right."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from selectbench.errors import SelectbenchError
from selectbench.evaluate import sandbox, sandbox_process
from selectbench.evaluate.sandbox import run_many, run_program
from selectbench.evaluate.sandbox_process import MARKER

FAST = {"timeout_s": 2.5, "memory_mb": 512}
LIMITS = {"memory_mb": 512, "cpu_s": 4, "file_mb": 16, "open_files": 256, "extra_tasks": 64}


def namespaces_available() -> bool:
    sandbox._namespace_support()
    return bool(sandbox._probed.get("ok"))


needs_namespaces = pytest.mark.skipif(
    not namespaces_available(), reason="this machine cannot create user namespaces (the sandbox's kernel layer)"
)


def leftover_sandbox_processes() -> list[int]:
    """Processes whose command line carries the sandbox marker (the child's argv)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if MARKER.encode() in cmdline:
            found.append(int(name))
    return found


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A folder with a file that no sample may change; asserted intact after the hostile samples ran."""
    folder = tmp_path / "host"
    folder.mkdir()
    (folder / "canary.txt").write_text("intact\n")
    return folder


def hostile_programs(canary: Path) -> dict[str, tuple[str, set[str]]]:
    """name -> (program, acceptable statuses). Every one must end not-passed."""
    target = canary / "canary.txt"
    me, my_group = os.getpid(), os.getpgid(0)
    return {
        "infinite loop": ("while True:\n    pass\n", {"timeout"}),
        "sleep forever": ("import time\ntime.sleep(3600)\n", {"timeout"}),
        "fork bomb": ("import os\nwhile True:\n    os.fork()\n", {"failed", "timeout"}),
        "subprocess bomb": (
            "import subprocess, sys\nwhile True:\n    subprocess.Popen([sys.executable, '-c', 'pass'])\n",
            {"failed", "timeout"},
        ),
        "huge allocation": ("x = bytearray(64 * 1024**3)\n", {"failed"}),
        "growing list": ("x = []\nwhile True:\n    x.append(' ' * 10**7)\n", {"failed"}),
        "delete file": (f"import os\nos.remove({str(target)!r})\n", {"failed"}),
        "overwrite file": (f"open({str(target)!r}, 'w').write('pwned')\n", {"failed"}),
        "write beside": (f"open({str(canary / 'new.txt')!r}, 'w').write('pwned')\n", {"failed"}),
        "rmtree": (f"import shutil\nshutil.rmtree({str(canary)!r})\n", {"failed"}),
        "pathlib unlink": (f"import pathlib\npathlib.Path({str(target)!r}).unlink()\n", {"failed"}),
        "socket connect": (
            "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\n",
            {"failed"},
        ),
        "raw socket": ("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 22))\n", {"failed"}),
        "kill parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nraise SystemExit(3)\n", {"failed"}),
        "kill evaluator": (f"import os, signal\nos.kill({me}, signal.SIGKILL)\nraise SystemExit(3)\n", {"failed"}),
        "killpg evaluator": (
            f"import os, signal\nos.killpg({my_group}, signal.SIGKILL)\nraise SystemExit(3)\n",
            {"failed"},
        ),
        "killpg own group": ("import os, signal\nos.killpg(os.getpgid(0), signal.SIGKILL)\n", {"failed"}),
        "exit 0 early": ("import sys\nsys.exit(0)\nassert False\n", {"failed"}),
        "os._exit 0": ("import os\nos._exit(0)\n", {"failed"}),
        "ctypes": ("import ctypes\nctypes.CDLL(None).kill(0, 9)\n", {"failed"}),
    }


@pytest.mark.parametrize("mode", ["auto", "process"])
def test_hostile_programs_fail_and_leave_host_and_evaluator_unharmed(
    mode: str, canary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sandbox.MODE_ENV, mode)
    programs = hostile_programs(canary)
    names = list(programs)
    # A harmless program after each hostile one: the evaluator keeps scoring.
    sources = [s for name in names for s in (programs[name][0], f"print('still here after {name}')\n")]
    before = sorted(os.listdir(canary))
    results = run_many(sources, workers=2, progress=False, **FAST)

    for i, name in enumerate(names):
        hostile, after = results[2 * i], results[2 * i + 1]
        assert hostile.status in programs[name][1], (name, hostile)
        assert after.status == "passed" and after.stdout.strip() == f"still here after {name}", (name, after)
    assert (canary / "canary.txt").read_text() == "intact\n"
    assert sorted(os.listdir(canary)) == before
    assert leftover_sandbox_processes() == []
    # Still alive, still scoring.
    assert run_program("print(6 * 7)\n", **FAST).stdout == "42\n"


def test_verdicts_limits_and_output_tails() -> None:
    ok = run_program("import sys\nprint('out')\nprint('err', file=sys.stderr)\n", **FAST)
    assert (ok.status, ok.returncode, ok.stdout, ok.stderr) == ("passed", 0, "out\n", "err\n")
    assert ok.isolation in ("namespace", "process") and ok.duration_s > 0

    failed = run_program("def f():\n    raise KeyError('k')\nf()\n", **FAST)
    assert failed.status == "failed" and failed.returncode == 1
    assert failed.detail == "KeyError: 'k'" and "Traceback" in failed.stderr

    exit_code = run_program("raise SystemExit(5)\n", **FAST)
    assert (exit_code.status, exit_code.returncode) == ("failed", 5)

    syntax = run_program("def broken(:\n", **FAST)
    assert syntax.status == "failed" and "SyntaxError" in syntax.detail

    memory = run_program("x = bytearray(600 * 1024**2)\n", timeout_s=5, memory_mb=256)
    assert memory.status == "failed" and memory.detail == "MemoryError"
    assert run_program("x = bytearray(50 * 1024**2)\nprint(len(x))\n", timeout_s=5, memory_mb=256).status == "passed"

    cpu = run_program("while True:\n    pass\n", timeout_s=30, cpu_s=1)
    assert cpu.status == "timeout" and cpu.detail == "CPU-time limit of 1 s" and cpu.duration_s < 25

    wall = run_program("import time\ntime.sleep(60)\n", timeout_s=1)
    assert wall.status == "timeout" and wall.returncode is None and 1 <= wall.duration_s < 5

    big = run_program(f"open('big', 'wb').write(b'x' * {(sandbox.FILE_SIZE_MB + 1) * 2**20})\n", **FAST)
    assert big.status == "failed" and "File too large" in big.detail

    chatty = run_program("print('x' * 100_000)\nprint('the end')\n", **FAST)
    assert chatty.status == "passed" and len(chatty.stdout) == sandbox_process.TAIL_CHARS
    assert chatty.stdout.endswith("the end\n")


def test_working_folder_is_private_temporary_and_environment_is_not_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SELECTBENCH_TEST_SECRET", "hunter2")
    program = (
        "import os, tempfile\n"
        "open('scratch.txt', 'w').write('mine')\n"
        "os.mkdir('sub')\n"
        "os.rename('scratch.txt', 'sub/moved.txt')\n"
        "print(os.getcwd())\n"
        "print(os.environ['HOME'] == os.getcwd() == tempfile.gettempdir())\n"
        "print('SELECTBENCH_TEST_SECRET' in os.environ, sorted(os.listdir('.')))\n"
    )
    result = run_program(program, **FAST)
    assert result.status == "passed", result
    cwd, same, listing = result.stdout.splitlines()
    assert same == "True"
    assert listing == "False ['sub']"
    assert not Path(cwd).exists()  # removed afterwards
    assert os.environ["SELECTBENCH_TEST_SECRET"] == "hunter2"


def test_guard_refuses_other_processes_proc_entries() -> None:
    result = run_program(f"print(open('/proc/{os.getpid()}/environ').read())\n", **FAST)
    assert result.status == "failed" and "PermissionError" in result.detail


def test_run_many_keeps_input_order_and_rejects_unknown_limits() -> None:
    results = run_many([f"print({i})\n" for i in range(6)], workers=3, progress=False, timeout_s=5)
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(6)]
    assert run_many([], progress=False) == []
    with pytest.raises(SelectbenchError, match="unknown limit"):
        run_many(["pass"], progress=False, timeout=3)
    with pytest.raises(SelectbenchError, match="memory_mb >= 64"):
        run_program("pass", memory_mb=10)


def test_unknown_sandbox_mode_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sandbox.MODE_ENV, "docker")
    with pytest.raises(SelectbenchError, match="valid: auto, namespace, process"):
        run_program("pass")


def test_describe_says_what_is_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sandbox.MODE_ENV, "process")
    described = sandbox.describe()
    assert described["mode"] == "process" and "Python guard only" in described["network"]
    monkeypatch.setenv(sandbox.MODE_ENV, "auto")
    assert sandbox.describe()["mode"] == sandbox.isolation()


# The kernel layer on its own: the Python guard is switched off, so only namespaces and rlimits stand in the way.


@needs_namespaces
def test_kernel_layer_alone_blocks_writes_network_and_signals(canary: Path) -> None:
    target = canary / "canary.txt"
    cases = {
        "write": (f"open({str(target)!r}, 'w').write('x')\n", "Read-only file system"),
        "delete": (f"import os\nos.remove({str(target)!r})\n", "Read-only file system"),
        "shm": ("open('/dev/shm/selectbench-sandbox-test', 'w').write('x')\n", "Read-only file system"),
        "network": ("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\n", "Network is unreachable"),
        "kill evaluator": (f"import os\nos.kill({os.getpid()}, 9)\n", "No such process"),
        "remount": (
            "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "rc = libc.mount(None, b'/', None, 32 | 4096, None)\n"  # MS_REMOUNT | MS_BIND, i.e. read-write again
            "raise SystemExit(f'remount rc={rc} errno={ctypes.get_errno()}')\n",
            "remount rc=-1 errno=1",  # EPERM: no capabilities left
        ),
        "new namespace": (
            "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "rc = libc.unshare(0x10000000)\n"  # CLONE_NEWUSER, the way to regain capabilities
            "raise SystemExit(f'unshare rc={rc}')\n",
            "unshare rc=-1",
        ),
    }
    for name, (program, expected) in cases.items():
        result = sandbox_process.run_child(program, timeout_s=5, limits=LIMITS, mode="namespace", guard=False)
        assert result.status == "failed", (name, result)
        assert expected in result.detail or expected in result.stderr, (name, result)
    assert target.read_text() == "intact\n"
    assert not Path("/dev/shm/selectbench-sandbox-test").exists()

    ps = sandbox_process.run_child(
        "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n",
        timeout_s=5,
        limits=LIMITS,
        mode="namespace",
        guard=False,
    )
    assert ps.stdout.strip() == "[1, 2]"  # the namespace's init and the program: nothing of the host


@needs_namespaces
def test_kernel_layer_alone_contains_a_fork_bomb() -> None:
    if os.geteuid() == 0 and not sandbox._probed["notes"].get("pid_max"):
        pytest.skip("as root only a per-namespace pid_max (kernel >= 6.14) bounds a fork bomb without the guard")
    bomb = "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.05)\n"
    result = sandbox_process.run_child(bomb, timeout_s=2, limits=LIMITS, mode="namespace", guard=False)
    assert result.status == "timeout"
    assert leftover_sandbox_processes() == []
    # Count how many processes the program can start (each child just sleeps) before the kernel says no.
    counted = sandbox_process.run_child(
        "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(60)\n"
        "        n += 1\nexcept OSError:\n    print(n)\n",
        timeout_s=10,
        limits=LIMITS,
        mode="namespace",
        guard=False,
    )
    forked = int(counted.stdout.split()[-1])
    bound = LIMITS["extra_tasks"] if os.geteuid() != 0 else sandbox.PID_MAX
    assert 0 < forked <= bound, counted
    assert leftover_sandbox_processes() == []
