"""dapfab drops the exec server's error line that Incus and LXD print after exit 127/126.

The top process's exit 127 or 126 makes the server report ``Command not found`` or ``Command
not executable``, which the client prints as the last line of its stderr; the user's command
never printed it, so :class:`~dapfab.execution.RemoteProcess` holds back a last line that may
be it and drops it only when the exit code matches. (Measured against real LXD in
``test_lxd_agreement.py``.)
"""

from __future__ import annotations

import pytest

from dapfab.execution import RemoteProcess


@pytest.mark.parametrize(("chunks", "code", "expected"), [
    ([b"err\n", b"Error: Command not found\n"], 127, b"err\n"),
    ([b"err\nError: Command not found\n"], 127, b"err\n"),
    ([b"Error: Comm", b"and not found\n"], 127, b""),
    ([b"Error: Command not executable\n"], 126, b""),
    ([b"Error: Command not found\n"], 0, b"Error: Command not found\n"),
    ([b"Error: Command not found\n"], 126, b"Error: Command not found\n"),
    ([b"partial Error: Command not found\n"], 127, b"partial Error: Command not found\n"),
    ([b"x", b"Error: Command not found\n"], 127, b"xError: Command not found\n"),
    ([b"Err", b"or: other\n", b"E"], 1, b"Error: other\nE"),
])
def test_dapfab_drops_only_the_servers_last_error_line(chunks, code, expected):
    proc = RemoteProcess.__new__(RemoteProcess)
    out: list[bytes] = []
    proc.write_stderr = out.append
    proc._stderr_tail, proc._stderr_at_line_start = bytearray(), True
    for chunk in chunks:
        proc.emit_stderr(chunk)
    proc._finish_stderr(code)
    assert b"".join(out) == expected


@pytest.mark.parametrize("code", [127, 126])
def test_the_servers_error_line_before_the_launcher_started_is_no_missing_vm(code):
    from dapfab.remote.incus import EXIT_ERROR_LINES, runner_failure

    err = runner_failure(code, EXIT_ERROR_LINES[code], incus="lxc", vm_name="lab-runner")
    assert err.exit_code == 125
    assert "could not start in VM lab-runner" in str(err)
    assert "not found" not in str(runner_failure(1, b"Error: Instance is not running\n",
                                                 incus="lxc", vm_name="v")).replace("running", "")
