"""The Python tool: no network, no writes outside its scratch folder, killed at its limits.

Each protection is shown with both layers on (what the tool uses), and where the machine allows
it, with the kernel layer alone (unshare as root), the bubblewrap layer alone (no root needed)
and the audit-hook layer alone. `scripts/compose_check.sh` runs this file inside the container
as its uid 1000.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from agent import ToolCall
from agent.sandbox import PythonSandbox
from agent.tools import run_calls


def redis_port_open() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(autouse=True)
def isolation_not_required(monkeypatch):
    """The image requires isolation; these tests name the layer they want (or require it)."""
    monkeypatch.delenv("LONGCTX_SANDBOX_REQUIRE_ISOLATION", raising=False)


@pytest.fixture(scope="module")
def kernel_available(tmp_path_factory):
    """The kernel layers this machine can run: a subset of {"kernel", "bwrap"}."""
    probe = PythonSandbox(tmp_path_factory.mktemp("probe"), require_isolation=False)
    return {mode for mode in ("kernel", "bwrap") if probe._layer_works(mode)}


def layers(kernel_available):
    """(name, sandbox options) for each layer this machine can run."""
    out = [("both", {"require_isolation": False}),
           ("hooks only", {"isolation": "hooks", "require_isolation": False})]
    if "kernel" in kernel_available:
        out.append(("kernel only", {"isolation": "kernel", "audit_hooks": False}))
    if "bwrap" in kernel_available:
        out.append(("bwrap only", {"isolation": "bwrap", "audit_hooks": False}))
    return out


def test_which_isolation_this_machine_gives(tmp_path, kernel_available):
    isolation = PythonSandbox(tmp_path, require_isolation=False).isolation
    print(f"sandbox isolation here: {isolation} (kernel layers that work: {sorted(kernel_available) or 'none'})")
    expected = next((m for m in ("kernel", "bwrap") if m in kernel_available), "hooks")
    assert isolation == expected


def test_where_isolation_is_required_hooks_alone_refuse_to_run_code(tmp_path):
    # what the image does (LONGCTX_SANDBOX_REQUIRE_ISOLATION=1) where no kernel layer works
    sandbox = PythonSandbox(tmp_path, isolation="hooks", require_isolation=True)
    run = sandbox.run("print('RAN')")
    assert sandbox.isolation == "refused" and "RAN" not in run.stdout
    assert sandbox.as_tool().fn("print(1)").startswith("refused: the python tool is off")


def test_code_runs_and_keeps_files_in_its_scratch_folder(tmp_path):
    sandbox = PythonSandbox(tmp_path / "scratch", timeout_s=10, require_isolation=False)
    first = sandbox.run("open('notes.txt', 'w').write('kept'); print(6 * 7)")
    assert (first.exit_code, first.stdout.strip()) == (0, "42"), first.stderr
    second = sandbox.run("print(open('notes.txt').read())")
    assert second.stdout.strip() == "kept"
    assert (tmp_path / "scratch" / "notes.txt").read_text() == "kept"


def test_no_network_connection(tmp_path, kernel_available):
    # a server that certainly answers on this machine: Redis if it runs, else our own listener
    listener = None
    port = 6379
    if not redis_port_open():
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\nprint('CONNECTED')"
    try:
        for layer, options in layers(kernel_available):
            run = PythonSandbox(tmp_path / layer, timeout_s=10, **options).run(code)
            assert "CONNECTED" not in run.stdout, layer
            assert run.exit_code != 0, layer
            expected = {"kernel only": "Network is unreachable",
                        "bwrap only": "Connection refused"}.get(layer, "network access is blocked")
            assert expected in run.stderr, (layer, run.stderr[-300:])
    finally:
        if listener is not None:
            listener.close()


@pytest.mark.parametrize(
    "attempt",
    [
        "open(TARGET, 'w').write('escaped')",
        "import os; fd = os.open(TARGET, os.O_WRONLY | os.O_CREAT); os.write(fd, b'escaped')",
        "import pathlib; pathlib.Path(TARGET).write_text('escaped')",
        "import os; os.symlink(TARGET, 'link'); open('link', 'w').write('escaped')",
        "import os; os.chdir('/tmp'); open(os.path.basename(TARGET), 'w').write('escaped')",
        "import subprocess; subprocess.run(['sh', '-c', 'echo escaped > ' + TARGET])",
    ],
)
def test_no_writes_outside_the_scratch_folder(tmp_path, attempt, kernel_available):
    target = f"/tmp/longctx-sandbox-{uuid.uuid4().hex}.txt"
    for layer, options in layers(kernel_available):
        run = PythonSandbox(tmp_path / layer, timeout_s=10, **options).run(
            f"TARGET = {target!r}\n{attempt}"
        )
        assert not os.path.exists(target), f"{layer} layer let {attempt!r} write {target}"
        assert "PermissionError" in run.stderr or "Read-only file system" in run.stderr, (
            layer,
            run.stderr,
        )


def test_existing_files_outside_cannot_be_changed_or_removed(tmp_path, kernel_available):
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    for layer, options in layers(kernel_available):
        for attempt in (
            f"import os; os.remove({str(victim)!r})",
            f"open({str(victim)!r}, 'a').write('x')",
        ):
            run = PythonSandbox(tmp_path / layer, timeout_s=10, **options).run(attempt)
            assert run.exit_code != 0, (layer, attempt)
        assert victim.read_text() == "original", layer


def test_killed_at_the_time_limit(tmp_path):
    sandbox = PythonSandbox(tmp_path, timeout_s=1.5)
    for code in ("while True: pass", "import time; time.sleep(60)"):
        run = sandbox.run(code)
        assert run.timed_out, code
        assert run.seconds < 5, f"{code!r} ran {run.seconds:.1f} s past a 1.5 s limit"
        assert run.report().startswith("killed: time limit")


def test_stopped_at_the_memory_limit(tmp_path):
    sandbox = PythonSandbox(tmp_path, timeout_s=20, memory_mb=200)
    run = sandbox.run("block = bytearray(400 * 1024 * 1024)\nprint('ALLOCATED')")
    assert "ALLOCATED" not in run.stdout
    assert run.memory_exceeded and run.exit_code != 0
    assert run.report().startswith("failed: memory limit")
    small = sandbox.run("block = bytearray(20 * 1024 * 1024)\nprint('ALLOCATED')")
    assert small.stdout.strip() == "ALLOCATED", small.stderr


def test_a_scratch_folder_it_made_is_removed():
    sandbox = PythonSandbox()
    sandbox.run("open('x', 'w').write('y')")
    scratch = sandbox.scratch
    assert os.path.exists(os.path.join(scratch, "x"))
    del sandbox
    assert not os.path.exists(scratch)


def test_output_is_capped(tmp_path):
    run = PythonSandbox(tmp_path, max_output_chars=100).run("print('x' * 100000)")
    assert len(run.stdout) < 200 and run.stdout.endswith("[... output cut]")


def test_the_tool_reports_to_the_model(tmp_path):
    tool = PythonSandbox(tmp_path, timeout_s=10).as_tool()
    (result,) = run_calls([ToolCall("python", {"code": "print(sum(range(10)))"}, id="p")], [tool])
    assert result.status == "ok" and result.content == "exit code 0\nstdout:\n45\n"
