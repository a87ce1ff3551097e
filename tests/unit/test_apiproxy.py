"""The laptop side of k8s.proxy that needs no lab: token, kubeconfig text and file, dry line."""

from __future__ import annotations

import json
import os
import stat

import pytest
from ruamel.yaml import YAML

from dapfab.apiproxy import (
    HEADER,
    ApiProxy,
    KubeconfigFile,
    dry_command,
    kubeconfig_text,
    new_token,
    proxy_command,
)
from dapfab.config import RunnerConfig
from dapfab.errors import ConfigError

# A namespace that, pasted into YAML, adds a user whose exec plugin the local kubectl runs.
INJECTION = ("default\nusers:\n- name: lab\n  user:\n    exec:\n      apiVersion: "
             "client.authentication.k8s.io/v1\n      command: touch\n      args: [/tmp/pwned]\n")


def _load(text: str) -> dict:
    return YAML(typ="safe").load(text)


def test_tokens_are_fresh_url_safe_and_at_least_128_bits():
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) * 6 >= 128 and t.replace("-", "").replace("_", "").isalnum() for t in tokens)


def test_the_kubeconfig_has_one_entry_named_after_the_runner_and_only_the_proxys_token():
    text = kubeconfig_text("prod-eu", "http://127.0.0.1:4242", "TOKEN", "web")
    assert text.startswith(HEADER)
    config = _load(text)
    assert config == json.loads(text[len(HEADER):])  # JSON after the comment: one reading
    assert config["clusters"] == [{"name": "prod-eu", "cluster": {"server": "http://127.0.0.1:4242"}}]
    assert config["users"] == [{"name": "prod-eu", "user": {"token": "TOKEN"}}]
    assert config["contexts"] == [{"name": "prod-eu", "context": {
        "cluster": "prod-eu", "user": "prod-eu", "namespace": "web"}}]
    assert config["current-context"] == "prod-eu"
    assert "namespace" not in _load(kubeconfig_text("a", "http://x", "t"))["contexts"][0]["context"]


def test_no_value_can_add_an_entry_to_the_kubeconfig():
    with pytest.raises(ConfigError, match="invalid namespace"):
        kubeconfig_text("lab", "http://x", "t", INJECTION)
    config = _load(kubeconfig_text("lab", "http://x\nusers: []", "t\n- name: x"))
    assert config["users"] == [{"name": "lab", "user": {"token": "t\n- name: x"}}]
    assert config["clusters"][0]["cluster"]["server"] == "http://x\nusers: []"


@pytest.mark.parametrize("option,value", [("namespace", INJECTION), ("namespace", "A"),
                                          ("context", "-x"), ("context", "a\nb")])
def test_the_library_refuses_what_k8s_kubectl_refuses(option, value, tmp_path):
    with pytest.raises(ConfigError, match=f"invalid (kubectl )?{option}"):
        ApiProxy(RunnerConfig(ssh_host="a@b", vm_name="lab"), kubeconfig=tmp_path / "k",
                 **{option: value})
    assert list(tmp_path.iterdir()) == []


def test_the_dry_line_and_the_sent_program_carry_no_token():
    assert "--api-prefix=/ " in dry_command() and "--context=c" in dry_command("c")
    assert "'--context=a b'" in dry_command("a b")
    program = proxy_command("c")
    assert "set -- --context=c" in program and "kubectl proxy --unix-socket" in program
    with pytest.raises(ConfigError, match="invalid kubectl context"):
        proxy_command("-x")


def test_the_file_is_created_0600_and_removed_only_if_unchanged(tmp_path):
    path = tmp_path / "config"
    first = KubeconfigFile(path)
    first.write(kubeconfig_text("a", "http://x", "t"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    first.remove()
    assert not path.exists()
    second = KubeconfigFile(path)
    second.write(kubeconfig_text("a", "http://x", "t"))
    path.write_text(path.read_text() + "# edited\n")
    second.remove()
    assert path.exists()


def test_a_file_dapfab_did_not_write_is_refused_by_the_create_itself(tmp_path):
    """The refusal is ``O_EXCL``'s: with ``O_TRUNC`` instead, the file would be emptied."""
    foreign = tmp_path / "foreign"
    foreign.write_text("apiVersion: v1\n")
    before = os.stat(foreign)
    with pytest.raises(ConfigError, match="dapfab did not write it"):
        KubeconfigFile(foreign).write(kubeconfig_text("a", "http://x", "t"))
    after = os.stat(foreign)
    assert foreign.read_text() == "apiVersion: v1\n"
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_symlink_is_refused_even_to_a_file_dapfab_wrote(tmp_path):
    target = tmp_path / "target"
    target.write_text(HEADER)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="dapfab did not write it"):
        KubeconfigFile(link).write(kubeconfig_text("a", "http://x", "t"))
    assert target.read_text() == HEADER and link.is_symlink()


def test_a_file_dapfab_wrote_before_is_replaced(tmp_path):
    path = tmp_path / "config"
    path.write_text(HEADER + "left behind\n")
    KubeconfigFile(path).write(kubeconfig_text("a", "http://x", "t"))
    assert "left behind" not in path.read_text()


def test_the_directory_is_held_by_descriptor_from_prepare_to_remove(tmp_path):
    """A directory renamed away and replaced after the checks still gets the file."""
    held = tmp_path / "held"
    held.mkdir()
    kubeconfig = KubeconfigFile(held / "config")
    kubeconfig.prepare()
    held.rename(tmp_path / "moved")
    held.mkdir()
    kubeconfig.write(kubeconfig_text("a", "http://x", "t"))
    assert list(held.iterdir()) == [] and (tmp_path / "moved" / "config").exists()
    kubeconfig.remove()
    assert not (tmp_path / "moved" / "config").exists()


def test_the_default_file_is_in_the_private_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    kubeconfig = KubeconfigFile(name="proxy-1-a.kubeconfig")
    assert kubeconfig.prepare() == tmp_path / "dapfab" / "proxy-1-a.kubeconfig"
    kubeconfig.write(kubeconfig_text("a", "http://x", "t"))
    assert stat.S_IMODE(os.stat(tmp_path / "dapfab").st_mode) == 0o700
    kubeconfig.remove()
