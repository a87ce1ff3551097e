"""TLS on ``k8s.proxy``'s laptop port (docs/design.md §14).

kubectl (client-go) sends a kubeconfig user's token only over TLS, so the laptop port
speaks TLS: each proxy makes a throwaway CA, signs one certificate for ``127.0.0.1``,
``::1`` and ``localhost`` with it and drops the CA's key, so nothing else can ever be signed
by what the kubeconfig trusts. The server key stays in memory (it reaches OpenSSL through
a pipe, never a file).

:class:`TlsConnection` is one accepted connection: OpenSSL driven through memory buffers
under one lock, since the bridge reads a connection in one thread and writes it in another
and an OpenSSL connection must not be used by two threads at once.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

RECORD = 1 << 16
HANDSHAKE = 0x16  # the first byte of a TLS client's first record


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def signed_pair(ca_name: str, server_name: str, addresses: list[str], dns_names: list[str],
                days: int) -> tuple[x509.Certificate, x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A fresh CA and a server certificate it signed for ``addresses`` and ``dns_names``
    (server auth only): ``(ca, server certificate, server key)``. The CA's key is dropped,
    so nothing else can ever be signed by what trusts this CA."""
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    later = now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    usage = {name: False for name in ("content_commitment", "key_encipherment",
                                      "data_encipherment", "key_agreement", "encipher_only",
                                      "decipher_only")}
    ca = (x509.CertificateBuilder()
          .subject_name(_name(ca_name)).issuer_name(_name(ca_name))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(later)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       **usage), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    names += [x509.DNSName(name) for name in dns_names]
    leaf = (x509.CertificateBuilder()
            .subject_name(_name(server_name)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(later)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return ca, leaf, key


def throwaway_certificate() -> tuple[bytes, ssl.SSLContext]:
    """A fresh CA (PEM, for the kubeconfig) and a server context with a certificate that CA
    signed for the loopback; the CA's key is gone when this returns."""
    ca, leaf, key = signed_pair("dapfab k8s.proxy", "localhost", ["127.0.0.1", "::1"],
                                ["localhost"], days=30)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    pem = serialization.Encoding.PEM
    _load_chain(context, leaf.public_bytes(pem), key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return ca.public_bytes(pem), context


def _load_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """``load_cert_chain`` from two pipes: OpenSSL reads files, the key must not be one."""
    pipes = []
    try:
        for data in (cert, key):
            read, write = os.pipe()
            pipes.append(read)
            try:
                os.write(write, data)  # far below a pipe's buffer
            finally:
                os.close(write)
        context.load_cert_chain(f"/dev/fd/{pipes[0]}", f"/dev/fd/{pipes[1]}")
    finally:
        for fd in pipes:
            os.close(fd)


class TlsConnection:
    """The socket calls the bridge makes (``recv``, ``sendall``, ``shutdown``, ``close``,
    ``settimeout``) over TLS on an accepted socket."""

    def __init__(self, context: ssl.SSLContext, sock: socket.socket) -> None:
        self.sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_side=True)
        self._lock = threading.Lock()  # around every use of the OpenSSL connection
        self._send = threading.Lock()  # keeps records in order on the socket

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def speaks_tls(self) -> bool:
        """Whether the client's first byte starts a TLS handshake (waits for it)."""
        first = self.sock.recv(1, socket.MSG_PEEK)
        return first[:1] == bytes([HANDSHAKE])

    def handshake(self) -> None:
        """Complete the TLS handshake (ssl.SSLError, an OSError, if the client fails it)."""
        while True:
            with self._lock:
                try:
                    self._tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                out = self._take_out()
            self._send_out(out)
            if done:
                return
            if not self._feed(0):
                raise ConnectionError("the client left during the TLS handshake")

    def recv(self, size: int, flags: int = 0) -> bytes:
        """Up to ``size`` decrypted bytes; b"" at the end. With ``MSG_DONTWAIT``,
        BlockingIOError when none are ready."""
        while True:
            with self._lock:
                try:
                    data = self._tls.read(size)
                except ssl.SSLWantReadError:
                    data = None
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    data = b""
                out = self._take_out()
            self._send_out(out)
            if data is not None:
                return data
            if not self._feed(flags):
                with self._lock:
                    self._in.write_eof()

    def _feed(self, flags: int) -> bool:
        """Read from the socket into OpenSSL; False at the socket's end."""
        raw = self.sock.recv(RECORD, flags & socket.MSG_DONTWAIT)
        if raw:
            with self._lock:
                self._in.write(raw)
        return bool(raw)

    def sendall(self, data: bytes) -> None:
        with self._lock:
            self._tls.write(data)
            out = self._take_out()
        self._send_out(out)

    def _take_out(self) -> bytes:
        """What OpenSSL wrote, with the send lock taken if there is any (call under _lock)."""
        out = self._out.read()
        if out:
            self._send.acquire()
        return out

    def _send_out(self, out: bytes) -> None:
        if out:
            try:
                self.sock.sendall(out)
            finally:
                self._send.release()

    def shutdown(self, how: int) -> None:
        """Say close_notify (best effort), then shut the socket down."""
        with self._lock:
            try:
                self._tls.unwrap()
            except (ssl.SSLError, ValueError):  # no close_notify back yet, or said already
                pass
            out = self._take_out()
        try:
            self._send_out(out)
        finally:
            self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()


__all__ = ["TlsConnection", "throwaway_certificate"]
