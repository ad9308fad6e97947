"""A Python tool for the model: code runs in a separate process, without network, with limits.

Off unless enabled (``builtin_tools(..., python=True)``, ``longctx agent --tools python``).
Each run is a fresh ``python -I`` child reading its code from stdin, with the scratch folder as
working directory. Two layers protect the host:

**Kernel layer** (used when we are root and ``unshare`` works; ``isolation == "kernel"``):
- a new network namespace: no interface is up, not even loopback, so no connection of any
  kind (TCP, UDP, to this machine's Redis) can be made;
- a new mount namespace in which every mount is remounted read-only except a bind mount of
  the scratch folder: writes anywhere else fail with EROFS, whatever the code does;
- a new PID namespace (with its own /proc): the code cannot see or signal host processes;
- all capabilities dropped (bounding set emptied, ``no_new_privs`` set) after that setup, so
  the code cannot undo the mounts or regain privileges through an executable.

**Limits** (always): ``RLIMIT_AS`` (memory; allocation past it raises MemoryError and the run
ends), ``RLIMIT_CPU`` (SIGXCPU for busy loops), ``RLIMIT_FSIZE`` (largest file written),
``RLIMIT_CORE`` 0, and a wall-clock timeout after which the whole process group is killed.
Output is capped before it reaches the model.

**Audit-hook layer** (always; the only one where ``unshare`` is unavailable, e.g. not root;
``isolation == "hooks"``): a PEP 578 audit hook installed before the code runs refuses socket
creation and name lookups, ``open`` for writing and file-changing ``os`` calls (remove, rename,
mkdir, chmod, symlink, ...) whose resolved path is outside the scratch folder, starting
processes (subprocess, os.system, exec*, fork, posix_spawn), ``os.kill``, and ctypes function
calls / raw memory access.

What is NOT protected:
- Reading: the code can read every file the service user can read (the kernel layer makes the
  file system read-only, not invisible). Do not run the service with secrets readable by it.
- In hooks-only mode, the hook lives in the same interpreter as the code; PEP 578 says audit
  hooks are not a sandbox. Known gaps: ``os.open(name, ..., dir_fd=fd)`` resolves ``name``
  against ``fd``, which the hook cannot see; C extensions that call libc directly bypass it; a
  symlink swapped between the check and the open. Use the kernel layer for untrusted code.
- CPU time of the machine inside the limits, and disk space of the scratch folder beyond
  ``RLIMIT_FSIZE`` per file (many files can fill it).
- The child runs as the same user (uid 0 here, without capabilities in kernel mode).

**bubblewrap layer** (``isolation == "bwrap"``; used by ``auto`` when not root, or when root
cannot ``unshare``, and ``bwrap`` runs here): the same kernel isolation without root, through
an unprivileged user namespace (``bwrap --unshare-all``: new user, network, mount, PID, IPC and
UTS namespaces; ``/`` bound read-only with only the scratch folder writable; its own /proc; all
capabilities dropped). Its network namespace has a loopback interface up with nothing listening,
so a connection is refused rather than unreachable. It needs a kernel that allows unprivileged
user namespaces; in a Docker container also a seccomp profile that allows ``unshare`` /
``clone`` of namespaces and a /proc that may be mounted (Docker's defaults refuse both).

**Containers** (``LONGCTX_SANDBOX_REQUIRE_ISOLATION=1``, set in the image): where neither kernel
layer works, the tool refuses to run code (``isolation == "refused"``) instead of falling back
to the audit hooks alone, since those are not a sandbox.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from agent.tools import Tool

_BOOTSTRAP = r"""
import os, sys, resource
scratch, memory, cpu, fsize, kernel, audit = sys.argv[1], *map(int, sys.argv[2:7])
code = sys.stdin.read()
sys.stdin.close()
import ctypes

def _mount(libc, target, flags, source=None):
    if libc.mount(source, target, None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)

def _isolate():
    libc = ctypes.CDLL(None, use_errno=True)
    MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
    _mount(libc, b"/", MS_REC | MS_PRIVATE)
    _mount(libc, scratch.encode(), MS_BIND, source=scratch.encode())
    points = [line.split()[4].replace("\\040", " ") for line in open("/proc/self/mountinfo")]
    for point in reversed(points):
        if point != scratch:
            _mount(libc, point.encode(), MS_REMOUNT | MS_BIND | MS_RDONLY)
    for cap in range(64):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "no_new_privs")
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    if libc.capset(header, (ctypes.c_uint32 * 6)()) != 0:
        raise OSError(ctypes.get_errno(), "capset")

if kernel:
    try:
        _isolate()
    except OSError as exc:
        print(f"sandbox setup failed: {exc}", file=sys.stderr)
        os._exit(71)

for limit, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu),
                     (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(limit, (value, value))
os.chdir(scratch)

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
PATH_ARGS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,),
             "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,), "os.symlink": (1,),
             "os.link": (1,), "os.rename": (0, 1), "shutil.rmtree": (0,), "os.mkfifo": (0,),
             "os.mknod": (0,), "os.setxattr": (0,), "os.removexattr": (0,)}
BLOCKED = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
           "os.fork", "os.forkpty", "os.kill", "os.killpg", "pty.spawn", "ctypes.dlopen",
           "ctypes.dlsym", "ctypes.call_function", "ctypes.cdata", "os.startfile")

def _inside(path):
    if isinstance(path, int):
        return True  # an open descriptor; opening it for writing was checked
    try:
        real = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return real == scratch or real.startswith(scratch + os.sep)

def _hook(event, args):
    if event.startswith("socket."):
        raise PermissionError("network access is blocked in the sandbox")
    if event in BLOCKED:
        raise PermissionError(f"{event} is blocked in the sandbox")
    if event == "open":
        path, mode, flags = args
        if path is None:
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & WRITE_FLAGS)
        if writing and not _inside(path):
            raise PermissionError(f"writing outside the scratch folder is blocked: {path!r}")
    elif event in PATH_ARGS:
        for index in PATH_ARGS[event]:
            if index < len(args) and not _inside(args[index]):
                raise PermissionError(f"{event} outside the scratch folder is blocked: {args[index]!r}")

if audit:
    sys.addaudithook(_hook)
del _isolate, _mount
sys.argv = ["<sandbox>"]
exec(compile(code, "<sandbox>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
"""

_UNSHARE = ("unshare", "--net", "--mount", "--pid", "--fork", "--mount-proc")
_BWRAP = ("bwrap", "--unshare-all", "--die-with-parent", "--cap-drop", "ALL", "--ro-bind", "/", "/",
          "--proc", "/proc", "--dev", "/dev")
_MODES = ("auto", "kernel", "bwrap", "hooks")


def isolation_required() -> bool:
    """LONGCTX_SANDBOX_REQUIRE_ISOLATION=1: no code runs under the audit hooks alone."""
    return os.environ.get("LONGCTX_SANDBOX_REQUIRE_ISOLATION", "") in ("1", "true", "yes")


@dataclass
class SandboxRun:
    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    memory_exceeded: bool
    seconds: float
    isolation: str

    def report(self) -> str:
        """What the model reads."""
        if self.isolation == "refused":
            return "refused: " + self.stderr
        if self.timed_out:
            head = "killed: time limit reached"
        elif self.memory_exceeded:
            head = "failed: memory limit reached"
        else:
            head = f"exit code {self.exit_code}"
        parts = [head]
        if self.stdout:
            parts.append("stdout:\n" + self.stdout)
        if self.stderr:
            parts.append("stderr:\n" + self.stderr)
        return "\n".join(parts)


class PythonSandbox:
    """Runs code in a child process; ``scratch`` persists between runs of one sandbox."""

    def __init__(
        self,
        scratch: str | Path | None = None,
        *,
        timeout_s: float = 10.0,
        memory_mb: int = 512,
        max_file_mb: int = 64,
        max_output_chars: int = 8000,
        isolation: str = "auto",
        audit_hooks: bool = True,
        require_isolation: bool | None = None,
    ):
        if isolation not in _MODES:
            raise ValueError("isolation is " + ", ".join(_MODES))
        owned = scratch is None
        if scratch is None:
            scratch = tempfile.mkdtemp(prefix="longctx-python-")
        Path(scratch).mkdir(parents=True, exist_ok=True)
        self.scratch = os.path.realpath(scratch)
        # a scratch folder we made goes away with the sandbox (or at exit); one given is kept
        self._remove_scratch = (
            weakref.finalize(self, shutil.rmtree, self.scratch, True) if owned else None
        )
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.max_file_mb = max_file_mb
        self.max_output_chars = max_output_chars
        self.audit_hooks = audit_hooks
        self.require_isolation = (
            isolation_required() if require_isolation is None else require_isolation
        )
        self._isolation = isolation

    @property
    def isolation(self) -> str:
        """``kernel``, ``bwrap``, ``hooks`` or ``refused`` (hooks alone where isolation is
        required); for ``auto``, found by trial runs (then remembered)."""
        if self._isolation == "auto":
            found = [m for m in ("kernel", "bwrap") if self._layer_works(m)][:1]
            self._isolation = found[0] if found else "hooks"
        if self._isolation == "hooks" and self.require_isolation:
            return "refused"
        return self._isolation

    def close(self) -> None:
        """Remove the scratch folder now if this sandbox created it."""
        if self._remove_scratch is not None:
            self._remove_scratch()

    def run(self, code: str) -> SandboxRun:
        isolation = self.isolation
        started = time.perf_counter()
        if isolation == "refused":
            reason = ("the python tool is off here: neither unshare (root) nor bubblewrap works, "
                      "and LONGCTX_SANDBOX_REQUIRE_ISOLATION forbids the audit hooks alone")
            return SandboxRun("", reason, None, False, False, 0.0, isolation)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                self._command(isolation),
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd=self.scratch,
                env=self._environment(),
                start_new_session=True,
            )
            timed_out = False
            try:
                proc.communicate(code.encode(), timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
            stdout, stderr = self._read(out), self._read(err)
        return SandboxRun(
            stdout=stdout,
            stderr=stderr,
            exit_code=proc.returncode,
            timed_out=timed_out or proc.returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU),
            memory_exceeded="MemoryError" in stderr,
            seconds=time.perf_counter() - started,
            isolation=isolation,
        )

    def as_tool(self) -> Tool:
        def python(code: str) -> str:
            return self.run(code).report()

        description = (
            "Run Python 3 code in a sandbox and get its printed output. No network; files can be "
            f"written only in the current folder; {self.timeout_s:g} s and {self.memory_mb} MB at "
            "most. Print the values you need."
        )
        parameters = {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "Python source to run"}},
            "required": ["code"],
        }
        return Tool("python", description, parameters, python, timeout_s=self.timeout_s + 5)

    def _command(self, mode: str) -> list[str]:
        limits = [
            str(self.memory_mb * 2**20),
            str(math.ceil(self.timeout_s) + 1),
            str(self.max_file_mb * 2**20),
            "1" if mode == "kernel" else "0",  # the bootstrap's own mounts and capability drop
            "1" if self.audit_hooks else "0",
        ]
        python = [sys.executable, "-I", "-c", _BOOTSTRAP, self.scratch, *limits]
        if mode == "kernel":
            return [*_UNSHARE, *python]
        if mode == "bwrap":
            return [*_BWRAP, "--bind", self.scratch, self.scratch, "--chdir", self.scratch,
                    "--", *python]
        return python

    def _environment(self) -> dict[str, str]:
        return {
            "PATH": "/usr/bin:/bin",
            "HOME": self.scratch,
            "TMPDIR": self.scratch,
            "LANG": "C.UTF-8",
            **{k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
        }

    def _read(self, handle) -> str:
        handle.seek(0)
        data = handle.read(self.max_output_chars * 4 + 1).decode("utf-8", "replace")
        if len(data) > self.max_output_chars:
            data = data[: self.max_output_chars] + "\n[... output cut]"
        return data

    def _layer_works(self, mode: str) -> bool:
        tool = "unshare" if mode == "kernel" else "bwrap"
        if (
            (mode == "kernel" and os.geteuid() != 0)
            or shutil.which(tool) is None
            or not sys.platform.startswith("linux")
        ):
            return False
        try:
            proc = subprocess.run(
                self._command(mode),
                input=b"print('ok')",
                capture_output=True,
                timeout=30,
                env=self._environment(),
                start_new_session=True,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return proc.returncode == 0 and proc.stdout.strip() == b"ok"


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
