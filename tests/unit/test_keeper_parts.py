"""The keeper's pure parts on real sockets and files: where it lives, the checks on that
place, and its messages with descriptors passed alongside."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dapfab.errors import ConfigError
from dapfab.keeper import place, wire

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path


def test_the_directory_is_created_private(runtime):
    made = place.directory()
    assert made == runtime / "dapfab" and (os.stat(made).st_mode & 0o777) == 0o700


def test_without_xdg_runtime_dir_it_is_under_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert place.directory() == tmp_path / ".cache" / "dapfab"


def test_a_symlinked_directory_is_refused(runtime, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    os.chmod(elsewhere, 0o700)
    (runtime / "dapfab").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="not a directory"):
        place.directory()


def test_a_directory_others_can_enter_is_refused(runtime):
    (runtime / "dapfab").mkdir(mode=0o755)
    os.chmod(runtime / "dapfab", 0o755)
    with pytest.raises(ConfigError, match="mode 0755"):
        place.directory()


@needs_root
def test_a_directory_of_another_user_is_refused(runtime):
    (runtime / "dapfab").mkdir(mode=0o700)
    os.chown(runtime / "dapfab", NOBODY, NOBODY)
    with pytest.raises(ConfigError, match=f"owned by uid {NOBODY}"):
        place.directory()


def test_socket_paths_fit_a_unix_socket():
    # A fixed place, not tmp_path: how long pytest's temporary directory is depends on the
    # user and TMPDIR (as nobody in CI it is 20 bytes longer), which is not what this checks.
    home_cache = Path("/home/a.long-user-name/.cache/dapfab")
    assert len(place.socket_path(home_cache, "a" * 24)) < place.SUN_PATH_MAX
    with pytest.raises(ConfigError, match="too long"):
        place.socket_path(home_cache / ("d" * 100), "a" * 24)


def test_messages_carry_payloads_and_descriptors():
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    read_end, write_end = os.pipe()
    with left, right:
        wire.send(left, {"op": "run", "n": 1}, b"\0payload", [write_end])
        wire.send(left, {"op": "h"})
        reader = wire.Reader(right)
        assert reader.next(5) == ({"op": "run", "n": 1}, b"\0payload")
        (passed,) = reader.take_fds()
        os.write(passed, b"through the passed descriptor")
        os.close(passed)
        os.close(write_end)
        assert os.read(read_end, 100) == b"through the passed descriptor"
        assert reader.next(5) == ({"op": "h"}, b"")
        assert reader.next(0.1) is None
        left.close()
        with pytest.raises(wire.Closed):
            reader.next(5)
    os.close(read_end)


@needs_root
def test_peer_uid_is_the_other_processs_uid():
    import shutil
    import tempfile

    shared = tempfile.mkdtemp(prefix="dapfab-peer-")  # pytest's tmp_path is root-only
    os.chmod(shared, 0o755)
    path = os.path.join(shared, "s")
    try:
        _check_peer(path)
    finally:
        shutil.rmtree(shared)


def _check_peer(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        os.chmod(path, 0o666)
        server.listen(1)
        code = f"import socket, time; s = socket.socket(socket.AF_UNIX); s.connect({path!r}); time.sleep(2)"
        child = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                                  "--clear-groups", sys.executable, "-I", "-c", code])
        try:
            server.settimeout(10)
            conn, _ = server.accept()
            with conn:
                assert (wire.peer_uid(conn), wire.peer_pid(conn)) == (NOBODY, child.pid)
        finally:
            child.kill()
            child.wait()


def test_a_keeper_whose_config_is_not_of_its_digest_exits_without_serving(runtime):
    """The digest in argv is the only thing ``ps`` shows: a keeper never serves under
    another identity's name (the config came on stdin, after a file changed)."""
    import json

    settings = json.dumps({"ssh_host": "ops@mgmt", "known_hosts": str(runtime / "known_hosts")})
    done = subprocess.run([sys.executable, "-m", "dapfab.keeper", "0" * 24], input=settings.encode(),
                          env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)}, capture_output=True,
                          timeout=30)
    assert done.returncode == 2, done.stderr
    assert not (runtime / "dapfab").exists() or not list((runtime / "dapfab").iterdir())
