"""Where keepers and proxy kubeconfigs live (docs/design.md §12, §14): ``$XDG_RUNTIME_DIR``
only when it is this user's private directory."""

from __future__ import annotations

import os

import pytest

from dapfab.errors import ConfigError
from dapfab.keeper import place

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@pytest.fixture
def home(tmp_path, monkeypatch):
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(path))
    return path


def _runtime(tmp_path, monkeypatch, mode: int):
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    os.chmod(runtime, mode)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime


def test_a_private_runtime_directory_is_used(tmp_path, monkeypatch, home):
    runtime = _runtime(tmp_path, monkeypatch, 0o700)
    assert place.directory() == runtime / "dapfab"


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o755, 0o711])
def test_a_runtime_directory_others_can_enter_or_write_is_not_used(tmp_path, monkeypatch, home, mode):
    runtime = _runtime(tmp_path, monkeypatch, mode)
    assert place.directory() == home / ".cache" / "dapfab"
    assert not (runtime / "dapfab").exists()


@needs_root
def test_a_runtime_directory_of_another_user_is_not_used(tmp_path, monkeypatch, home):
    runtime = _runtime(tmp_path, monkeypatch, 0o700)
    os.chown(runtime, NOBODY, NOBODY)
    assert place.directory() == home / ".cache" / "dapfab"


def test_a_symlinked_runtime_directory_is_not_used(tmp_path, monkeypatch, home):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "link"))
    assert place.directory() == home / ".cache" / "dapfab"


def test_a_cache_directory_others_can_write_is_refused(tmp_path, monkeypatch, home):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    (home / ".cache").mkdir()
    os.chmod(home / ".cache", 0o777)
    with pytest.raises(ConfigError, match="another user can write it"):
        place.directory()


def test_the_descriptor_is_of_the_checked_directory(tmp_path, monkeypatch, home):
    runtime = _runtime(tmp_path, monkeypatch, 0o700)
    path, fd = place.open_directory()
    try:
        assert os.fstat(fd).st_ino == os.stat(runtime / "dapfab").st_ino
    finally:
        os.close(fd)
    assert path == runtime / "dapfab"
