"""A throwaway CA and server certificate for the API server, and the kubeconfig that trusts it."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from dapfab.tls import signed_pair


def make_certificates(directory: Path, address: str) -> tuple[Path, Path, Path]:
    """Write ca.crt, server.crt and server.key (0600) for ``address``; return their paths."""
    ca, cert, key = signed_pair("dapfab-lab-ca", "kube-apiserver", [address],
                                ["kubernetes", "kubernetes.default.svc", "localhost"], days=7)
    ca_path, cert_path, key_path = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return ca_path, cert_path, key_path


def kubeconfig_text(server: str, ca_pem: bytes, token: str, namespace: str = "default") -> str:
    """A complete kubeconfig with one cluster, user and context named ``dapfab-lab``."""
    ca_data = base64.b64encode(ca_pem).decode()
    return (
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        "- name: dapfab-lab\n"
        "  cluster:\n"
        f"    server: {server}\n"
        f"    certificate-authority-data: {ca_data}\n"
        "users:\n"
        "- name: dapfab-lab\n"
        "  user:\n"
        f"    token: {token}\n"
        "contexts:\n"
        "- name: dapfab-lab\n"
        "  context:\n"
        "    cluster: dapfab-lab\n"
        "    user: dapfab-lab\n"
        f"    namespace: {namespace}\n"
        "current-context: dapfab-lab\n"
    )


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 (atomically: temp file then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
