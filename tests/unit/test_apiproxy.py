"""The laptop side of k8s.proxy that needs no lab: token, kubeconfig text and file, dry line."""

from __future__ import annotations

import os
import stat

import pytest
from ruamel.yaml import YAML

from dapfab.apiproxy import (
    HEADER,
    KubeconfigFile,
    dry_command,
    kubeconfig_text,
    new_token,
    proxy_command,
)
from dapfab.errors import ConfigError


def _load(text: str) -> dict:
    return YAML(typ="safe").load(text)


def test_tokens_are_fresh_url_safe_and_at_least_128_bits():
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) * 6 >= 128 and t.replace("-", "").replace("_", "").isalnum() for t in tokens)


def test_the_kubeconfig_has_one_entry_named_after_the_runner_and_no_credentials():
    text = kubeconfig_text("prod-eu", "http://127.0.0.1:4242/TOKEN", "web")
    assert text.startswith(HEADER)
    config = _load(text)
    assert config["clusters"] == [{"name": "prod-eu", "cluster": {"server": "http://127.0.0.1:4242/TOKEN"}}]
    assert config["users"] == [{"name": "prod-eu", "user": {}}]
    assert config["contexts"] == [{"name": "prod-eu", "context": {
        "cluster": "prod-eu", "user": "prod-eu", "namespace": "web"}}]
    assert config["current-context"] == "prod-eu"
    assert "namespace" not in _load(kubeconfig_text("a", "http://x"))["contexts"][0]["context"]


def test_the_dry_line_has_placeholders_and_the_sent_program_has_the_token():
    assert "--api-prefix=/<token>/" in dry_command() and "--context=c" in dry_command("c")
    program = proxy_command("SECRET123", "c")
    assert "set -- SECRET123 --context=c" in program and "kubectl proxy --unix-socket" in program


def test_the_file_is_created_0600_and_removed_only_if_unchanged(tmp_path):
    path = tmp_path / "config"
    first = KubeconfigFile(path)
    first.write(kubeconfig_text("a", "http://x"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    first.remove()
    assert not path.exists()
    second = KubeconfigFile(path)
    second.write(kubeconfig_text("a", "http://x"))
    path.write_text(path.read_text() + "# edited\n")
    second.remove()
    assert path.exists()


def test_a_file_dapfab_did_not_write_or_a_symlink_is_refused(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.write_text("apiVersion: v1\n")
    with pytest.raises(ConfigError, match="dapfab did not write it"):
        KubeconfigFile(foreign).write(kubeconfig_text("a", "http://x"))
    assert foreign.read_text() == "apiVersion: v1\n"
    target = tmp_path / "target"
    target.write_text(HEADER)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="dapfab did not write it"):
        KubeconfigFile(link).write(kubeconfig_text("a", "http://x"))
    assert target.read_text() == HEADER


def test_a_file_dapfab_wrote_before_is_replaced(tmp_path):
    path = tmp_path / "config"
    path.write_text(HEADER + "left behind\n")
    KubeconfigFile(path).write(kubeconfig_text("a", "http://x"))
    assert "left behind" not in path.read_text()
