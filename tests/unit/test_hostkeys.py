"""known_hosts handling, checked against OpenSSH's own ssh-keygen."""

from __future__ import annotations

import subprocess

import paramiko
import pytest

from dapfab import hostkeys


@pytest.fixture
def key(tmp_path):
    path = tmp_path / "hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path, paramiko.Ed25519Key.from_private_key_file(str(path))


def test_fingerprint_matches_ssh_keygen(key):
    path, pkey = key
    listed = subprocess.run(["ssh-keygen", "-lf", f"{path}.pub"], capture_output=True,
                            text=True, check=True).stdout.split()[1]
    assert hostkeys.fingerprint(pkey) == listed


@pytest.mark.parametrize("hashed", [False, True])
def test_appended_entries_are_found_by_ssh_keygen(tmp_path, key, hashed):
    _, pkey = key
    known = tmp_path / "known_hosts"
    known.write_text("@cert-authority *.example.org ssh-ed25519 AAAAC3Nza\nbroken-line-no-newline")
    name = hostkeys.known_hosts_name("198.18.0.9", 2222)
    hostkeys.append_known_host(str(known), name, pkey, hashed=hashed)
    lines = known.read_text().splitlines()
    assert lines[:2] == ["@cert-authority *.example.org ssh-ed25519 AAAAC3Nza",
                         "broken-line-no-newline"]
    assert lines[2].startswith("|1|") == hashed
    found = subprocess.run(["ssh-keygen", "-F", "[198.18.0.9]:2222", "-f", str(known)],
                           capture_output=True, text=True)
    assert found.returncode == 0 and pkey.get_base64() in found.stdout


def test_appended_entry_is_accepted_by_paramiko(tmp_path, key):
    _, pkey = key
    known = tmp_path / "known_hosts"
    hostkeys.append_known_host(str(known), "mgmt", pkey, hashed=True)
    loaded = paramiko.HostKeys(str(known))
    assert loaded.lookup("mgmt")["ssh-ed25519"] == pkey


def test_unknown_host_error_names_the_fingerprint_and_the_fix(key):
    _, pkey = key
    err = hostkeys.unknown_host_error("management host", "[10.0.0.1]:2222", pkey, "/k")
    assert err.exit_code == 255
    assert hostkeys.fingerprint(pkey) in err.message
    assert "ssh-keyscan -p 2222 -t ssh-ed25519 10.0.0.1 >> /k" in err.hint
