"""k8s.proxy (docs/design.md §14): the cluster's API for local tools through the runner.

A real kubectl (1.32) on the laptop, and the Python ``kubernetes`` client, use the kubeconfig
the proxy writes; the runner's ``kubectl proxy`` listens on a Unix socket in a private
directory; the runner's credentials never leave the runner.
"""

from __future__ import annotations

import base64
import concurrent.futures
import os
import re
import shutil
import signal
import ssl
import stat
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from dapfab.testing.waiting import wait_until

pytestmark = pytest.mark.lab

PROXYING = re.compile(r"Proxying (\S+) API on https://127\.0\.0\.1:(\d+) \(kubeconfig (.+)\)$")
KUBECTL_132 = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32"
KUBECTL = KUBECTL_132 if os.path.exists(KUBECTL_132) else "kubectl"
CONFIGMAP = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-the-laptop\ndata:\n  a: b\n"


class Proxy:
    """A running ``inv k8s.proxy`` and what it printed."""

    def __init__(self, child, tmp: Path) -> None:
        self.child = child
        first = child.line().rstrip("\n")
        match = PROXYING.match(first)
        assert match, first
        self.name, self.port, self.kubeconfig = match[1], int(match[2]), Path(match[3])
        assert child.line().rstrip("\n") == f"export KUBECONFIG={self.kubeconfig}"
        self.config = yaml.safe_load(self.kubeconfig.read_text())
        self.token = self.config["users"][0]["user"]["token"]
        ca = self.config["clusters"][0]["cluster"]["certificate-authority-data"]
        self.tls = ssl.create_default_context(cadata=base64.b64decode(ca).decode())
        self.env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HOME": str(tmp)}

    def kubectl(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("timeout", 60)
        return subprocess.run([KUBECTL, *args], env=self.env, **kwargs)

    def get(self, path: str, token: str | None = None, host: str | None = None) -> int:
        """The HTTP status of GET http://127.0.0.1:<port><path> (with ``token`` as bearer,
        ``host`` as the Host header)."""
        return self.answer(path, token, host)[0]

    def answer(self, path: str, token: str | None = None, host: str | None = None,
               address: str = "127.0.0.1") -> tuple[int, bytes]:
        """Status and body of that GET (over TLS, trusting the kubeconfig's CA)."""
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        if host is not None:
            headers["Host"] = host
        ask = urllib.request.Request(f"https://{address}:{self.port}{path}", headers=headers)
        try:
            with urllib.request.urlopen(ask, timeout=30, context=self.tls) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()


@pytest.fixture
def proxy(lab, inv, clean, tmp_path) -> Proxy:
    return Proxy(inv("k8s.proxy", "-n", "default"), tmp_path)


def runner_socket(lab) -> str:
    done = lab.run("runner", "ls -d /tmp/dapfab-api.*/api.sock", check=True)
    return done.stdout.split()[0]


def test_a_local_kubectl_gets_applies_and_reads_logs(proxy):
    got = proxy.kubectl("get", "pods", "-o", "name")
    assert got.stdout == b"pod/web\n", got.stderr
    applied = proxy.kubectl("apply", "-f", "-", input=CONFIGMAP)
    assert applied.returncode == 0 and b"configmap/from-the-laptop" in applied.stdout, applied.stderr
    assert proxy.kubectl("get", "configmap", "from-the-laptop", "-o", "name").stdout == \
        b"configmap/from-the-laptop\n"
    logs = proxy.kubectl("logs", "web")
    assert logs.stdout.startswith(b"pod web"), logs.stderr


def test_logs_follow_streams_through_the_proxy(proxy):
    follow = subprocess.Popen([KUBECTL, "logs", "-f", "web"], env=proxy.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = [follow.stdout.readline() for _ in range(3)]
        assert lines[0].startswith(b"pod web") and lines[2].startswith(b"tick"), lines
    finally:
        follow.kill()
        follow.wait()


def test_port_forward_through_the_proxy(proxy, lab):
    forward = subprocess.Popen([KUBECTL, "port-forward", "pod/web", ":8080"], env=proxy.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = forward.stdout.readline().decode()
        port = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> 8080", line)
        assert port, line + forward.stderr.read1(4096).decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port[1]}/status/200", timeout=30) as answer:
            assert answer.status == 200
    finally:
        forward.kill()
        forward.wait()


@pytest.mark.parametrize("transport", ["true", "false"], ids=["websocket", "spdy"])
def test_exec_and_attach_through_the_proxy(proxy, transport):
    env = {**proxy.env, "KUBECTL_REMOTE_COMMAND_WEBSOCKETS": transport}
    done = subprocess.run([KUBECTL, "exec", "-i", "web", "--", "sh", "-c", "wc -c; exit 3"],
                          input=b"y" * 70_000, env=env, capture_output=True, timeout=60)
    assert (done.returncode, done.stdout.split()) == (3, [b"70000"]), done.stderr
    attach = subprocess.Popen([KUBECTL, "attach", "web"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        assert attach.stdout.readline().startswith(b"tick ")
    finally:
        attach.kill()
        attach.wait()


def test_exec_it_through_the_proxy_on_a_terminal(proxy):
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 31, 97, 0, 0))
    local = subprocess.Popen([KUBECTL, "exec", "-it", "web", "--", "sh", "-c", "stty size; exit 6"],
                             stdin=slave, stdout=slave, stderr=slave, env=proxy.env,
                             start_new_session=True,
                             preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(slave)
    output = b""
    try:
        while chunk := _read(master):
            output += chunk
        assert local.wait(30) == 6, output
    finally:
        local.kill()
        local.wait()
        os.close(master)
    assert b"31 97" in output


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # the terminal's other side closed
        return b""


def test_the_python_kubernetes_client_lists_pods(proxy):
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(str(proxy.kubeconfig)))
    assert [pod.metadata.name for pod in api.list_namespaced_pod("default").items] == ["web"]


def test_fifty_concurrent_local_kubectl_calls_all_succeed(proxy):
    assert proxy.kubectl("get", "pods").returncode == 0  # discovery cached, as an operator's is
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda _: proxy.kubectl("get", "pods", "-o", "name"), range(50)))
    failed = [r.stderr[-300:] for r in results if r.returncode or r.stdout != b"pod/web\n"]
    assert failed == []


def test_a_missing_or_wrong_token_is_refused_on_the_laptop(proxy, lab):
    pods = "/api/v1/namespaces/default/pods"
    assert proxy.get(pods, token=proxy.token) == 200
    for token in (None, proxy.token[:-1] + "x", ""):
        status, body = proxy.answer(pods, token=token)
        assert (status, body[:17]) == (401, b"dapfab k8s.proxy:"), body
    assert proxy.get(f"/{proxy.token}{pods}") == 401  # a token in the path is no way in
    log = (lab.state_dir / "cluster" / "requests.log").read_text().splitlines()
    assert all('"token": "valid"' in line for line in log[-20:] if '"path"' in line), log[-20:]


def test_a_plain_http_client_is_told_the_port_speaks_tls(proxy):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{proxy.port}/api", timeout=30)
    assert refused.value.code == 400
    assert refused.value.read() == b"dapfab k8s.proxy: this port speaks TLS (https)\n"


def test_a_foreign_host_is_refused_on_the_laptop_even_with_the_token(proxy):
    """DNS rebinding: a browser led to the laptop port sends its own name as Host."""
    pods = "/api/v1/namespaces/default/pods"
    assert proxy.get(pods, token=proxy.token, host=f"localhost:{proxy.port}") == 200
    for host in (f"evil.example:{proxy.port}", "127.0.0.1.evil", f"xlocalhost:{proxy.port}"):
        status, body = proxy.answer(pods, token=proxy.token, host=host)
        assert (status, body[:17]) == (403, b"dapfab k8s.proxy:"), (host, body)


def test_the_runners_kubectl_proxy_refuses_a_foreign_host_too(proxy, lab):
    """Its --accept-hosts patterns are anchored: ``127.0.0.1.evil`` is not ``127.0.0.1``."""
    sock = runner_socket(lab)

    def status(host: str) -> str:
        done = lab.run("runner", ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                  "--unix-socket", sock, "-H", f"Host: {host}",
                                  "http://localhost/api"])
        return done.stdout

    assert [status(h) for h in ("localhost", "127.0.0.1:8001", "[::1]:8001")] == ["200"] * 3
    foreign = ("127.0.0.1.evil", "xlocalhost", "localhost.evil", "x127.0.0.1", "evil.example")
    assert [status(h) for h in foreign] == ["403"] * len(foreign)


def test_a_client_whose_localhost_is_ipv6_gets_in_too(proxy):
    from dapfab.bridge import _has_ipv6_loopback

    if not _has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback")
    assert proxy.answer("/api/v1/namespaces/default/pods", proxy.token, address="[::1]")[0] == 200


def test_the_kubeconfig_is_private_named_after_the_runner_and_has_only_the_proxys_token(proxy, lab):
    info = proxy.kubeconfig.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.getuid()
    config = yaml.safe_load(proxy.kubeconfig.read_text())
    assert proxy.name == lab.vm_name
    assert config["current-context"] == lab.vm_name
    [cluster] = config["clusters"]
    assert cluster["name"] == lab.vm_name
    assert cluster["cluster"]["server"] == f"https://127.0.0.1:{proxy.port}"
    assert b"BEGIN CERTIFICATE" in base64.b64decode(cluster["cluster"]["certificate-authority-data"])
    assert config["users"] == [{"name": lab.vm_name, "user": {"token": proxy.token}}]
    assert config["contexts"][0]["context"]["namespace"] == "default"
    assert len(proxy.token) >= 22  # at least 128 bits, URL-safe base64


def _secrets_of_the_runner(lab) -> list[str]:
    """The credential values in the runner's own kubeconfig."""
    import yaml

    config = yaml.safe_load((lab.state_dir / "cluster" / "kubeconfig").read_text())
    found = []
    for user in config["users"]:
        found += [str(v) for k, v in user["user"].items() if k in ("token", "client-key-data",
                                                                    "client-certificate-data", "password")]
    assert found  # the lab's runner has a credential to leak
    return found


def _process_texts(lab, host: str) -> list[bytes]:
    texts = []
    for pid, _ in lab.processes(host):
        for part in ("cmdline", "environ"):
            try:
                texts.append(Path(f"/proc/{pid}/{part}").read_bytes())
            except OSError:
                pass
    return texts


def test_the_runners_credentials_never_leave_the_runner(proxy, lab):
    assert proxy.kubectl("get", "pods").returncode == 0
    secrets = [s.encode() for s in _secrets_of_the_runner(lab)]
    texts = _process_texts(lab, "laptop") + _process_texts(lab, "mgmt")
    files = [proxy.kubeconfig, *Path(lab.runtime_dir()).rglob("*"),
             *(lab.state_dir / "mgmt" / "home").rglob("*")]
    texts += [f.read_bytes() for f in files if f.is_file()]
    texts += [f.read_bytes() for f in (Path(proxy.env["HOME"]) / ".kube").rglob("*") if f.is_file()]
    assert len(texts) > 10
    assert [s for s in secrets if any(s in t for t in texts)] == []


def test_another_vm_user_cannot_reach_the_proxy_and_nothing_listens_on_tcp(proxy, lab):
    sock = runner_socket(lab)
    mode = lab.run("runner", ["stat", "-c", "%a %U", sock.rsplit("/", 1)[0]], check=True).stdout
    assert mode.split() == ["700", "root"]
    done = lab.run("runner", ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              "socat", "-u", "OPEN:/dev/null", f"UNIX-CONNECT:{sock}"])
    assert done.returncode != 0 and "Permission denied" in done.stderr, done
    as_root = lab.run("runner", ["curl", "-sS", "--unix-socket", sock, "http://localhost/api"])
    assert '"versions"' in as_root.stdout, as_root
    tables = lab.run("runner", "cat /proc/net/tcp /proc/net/tcp6", check=True).stdout.splitlines()
    assert [row for row in tables if row.split()[3:4] == ["0A"]] == []  # no TCP listener


def test_kubectl_proxy_is_restarted_on_the_same_socket_and_token(proxy, lab):
    sock = runner_socket(lab)
    [(pid, _)] = [(p, a) for p, a in lab.processes("runner", nested=True)
                  if "proxy" in a and any(w.startswith("--unix-socket") for w in a)]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: proxy.kubectl("get", "pods", "-o", "name").stdout == b"pod/web\n",
               timeout=30, what="the proxy to serve again")
    assert runner_socket(lab) == sock


def test_a_second_proxy_gets_its_own_kubeconfig(proxy, inv, tmp_path):
    other = Proxy(inv("k8s.proxy"), tmp_path)
    assert other.kubeconfig != proxy.kubeconfig and other.token != proxy.token
    assert other.kubectl("get", "pods", "-o", "name").stdout == b"pod/web\n"


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_remote_proxy_and_removes_the_kubeconfig(proxy, clean, sig, code):
    assert proxy.kubectl("get", "pods").returncode == 0
    proxy.child.proc.send_signal(sig)
    rc, err = proxy.child.finish()
    assert rc == code, err
    assert not proxy.kubeconfig.exists()
    clean(1.0)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_a_killed_or_frozen_proxy_leaves_nothing_in_the_runner_within_20_s(proxy, lab, inv, clean, tmp_path, how):
    if how == "SIGKILL":
        proxy.child.proc.kill()
        proxy.child.proc.wait()
        print(f"gone after {clean(20.0):.1f} s")
        stale = runner_socket(lab)  # killed with the launcher: its directory stays, unlocked
        again = Proxy(inv("k8s.proxy"), tmp_path)
        assert again.kubectl("get", "pods", "-o", "name").stdout == b"pod/web\n"
        assert lab.run("runner", "ls -d /tmp/dapfab-api.*/api.sock").stdout.split() == [runner_socket(lab)]
        assert runner_socket(lab) != stale  # the next proxy removed the stale one
    else:
        lab.freeze(proxy.child.proc.pid)
        try:
            print(f"gone after {clean(20.0):.1f} s")
        finally:
            proxy.child.kill()
            lab.thaw(proxy.child.proc.pid)


def test_a_kubeconfig_changed_while_running_is_left_in_place(proxy):
    proxy.kubeconfig.write_text(proxy.kubeconfig.read_text() + "# mine now\n")
    proxy.child.proc.send_signal(signal.SIGINT)
    rc, _ = proxy.child.finish()
    assert rc == 130 and proxy.kubeconfig.exists()
    proxy.kubeconfig.unlink()


def test_the_token_shows_nowhere_but_in_the_kubeconfig(lab, inv, clean, tmp_path, monkeypatch):
    monkeypatch.setenv("DAP_DEBUG", "1")
    child = inv("--debug", "--echo", "k8s.proxy")
    running = Proxy(child, tmp_path)
    assert running.kubectl("get", "pods").returncode == 0
    assert running.get("/api", token="wrong") == 401
    child.proc.send_signal(signal.SIGINT)
    rc, err = child.finish()
    out = child.out
    assert rc == 130 and running.token not in out + err
    assert "--api-prefix=/ " in out + err  # what --echo showed


def test_kubeconfig_onto_a_file_dapfab_did_not_write_is_refused(lab, inv, clean, tmp_path):
    foreign = tmp_path / "config"
    foreign.write_text("apiVersion: v1\nkind: Config\n# someone's own\n")
    child = inv("k8s.proxy", "--kubeconfig", str(foreign))
    rc, err = child.finish()
    assert rc == 2 and f"refusing to overwrite {foreign}: dapfab did not write it" in err, err
    assert foreign.read_text().endswith("# someone's own\n")
    clean(2.0)


def test_kubeconfig_onto_a_file_dapfab_wrote_before_is_replaced_and_removed(lab, inv, clean, tmp_path):
    from dapfab.apiproxy import HEADER

    left = tmp_path / "config"
    left.write_text(HEADER + "left by a proxy that was killed\n")
    running = Proxy(inv("k8s.proxy", "--kubeconfig", str(left)), tmp_path)
    assert running.kubeconfig == left
    assert running.kubectl("get", "pods", "-o", "name").stdout == b"pod/web\n"
    running.child.proc.send_signal(signal.SIGTERM)
    assert running.child.finish()[0] == 143 and not left.exists()


def test_the_api_proxy_context_manager(lab, runner_config, clean, tmp_path):
    from dapfab.apiproxy import api_proxy

    results = []
    with api_proxy(runner_config, namespace="default") as path:
        env = {**os.environ, "KUBECONFIG": str(path), "HOME": str(tmp_path)}
        results.append(subprocess.run([KUBECTL, "get", "pods", "-o", "name"], env=env,
                                      capture_output=True, timeout=60).stdout)
        results.append(path.exists())
    assert results == [b"pod/web\n", True] and not path.exists()
    clean(1.0)


def test_several_runners_or_a_port_in_use_are_refused_before_anything_runs(lab, inv, clean):
    import socket

    child = inv("k8s.proxy", "--runner", "a,b")
    rc, err = child.finish()
    assert rc == 2 and ("one runner, not 2" in err or "unknown runner profile" in err), err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        child = inv("k8s.proxy", "--laptop-port", str(taken.getsockname()[1]))
        rc, err = child.finish()
    assert rc == 2 and "in use" in err, err
    clean(2.0)


def test_the_dry_line_names_no_token(lab, inv):
    child = inv("--dry", "k8s.proxy")
    rc, err = child.finish()
    out = child.out
    assert rc == 0 and "kubectl proxy --unix-socket=<private dir>/api.sock --api-prefix=/ " in out



def test_a_namespace_cannot_add_an_exec_plugin_that_the_local_kubectl_runs(lab, inv, clean, tmp_path):
    """``-n`` is checked as ``k8s.kubectl -n`` is (exit 2 before anything is sent): pasted
    into the kubeconfig, this one adds a cluster and a user whose exec plugin kubectl runs."""
    marker = tmp_path / "plugin-ran"
    kubeconfig = tmp_path / "kubeconfig"
    name = lab.vm_name
    evil = (f"default\nclusters:\n- name: {name}\n  cluster:\n    server: https://127.0.0.1:9\n"
            f"    insecure-skip-tls-verify: true\nusers:\n- name: {name}\n  user:\n    exec:\n"
            f"      apiVersion: client.authentication.k8s.io/v1\n      command: touch\n"
            f"      args: [{marker}]\n      interactiveMode: Never\n")
    child = inv("k8s.proxy", "--kubeconfig", str(kubeconfig), "-n", evil)
    if child.line().startswith("Proxying"):  # it ran: what the operator's kubectl then does
        subprocess.run([KUBECTL, "get", "pods"], env={**os.environ, "KUBECONFIG": str(kubeconfig),
                       "HOME": str(tmp_path)}, capture_output=True, timeout=60)
    assert not marker.exists(), "the local kubectl ran an exec plugin the namespace added"
    rc, err = child.finish()
    assert rc == 2 and "invalid namespace" in err and len(err.splitlines()) == 1, err
    assert not kubeconfig.exists()
    clean(2.0)


def _files_naming_or_holding(secret: bytes, roots: list[Path], skip: Path) -> list[str]:
    """Every file or directory under ``roots`` whose path or (regular file) content has
    ``secret``, but ``skip``."""
    found = []
    for root in roots:
        for top, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(top) / name
                if path == skip:
                    continue
                if secret in os.fsencode(path):
                    found.append(str(path))
                elif name in files and path.is_file() and not path.is_symlink():
                    try:
                        if path.stat().st_size < 16 << 20 and secret in path.read_bytes():
                            found.append(str(path))
                    except OSError:
                        pass
    return found


def test_the_token_reaches_no_file_but_the_kubeconfig_and_never_the_vm(lab, inv, clean, tmp_path):
    """kubectl names its discovery cache after the server URL: the token is not in it."""
    places = {var: tmp_path / var.lower() for var in (
        "HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "TMPDIR")}
    for place in places.values():
        place.mkdir()
    running = Proxy(inv("k8s.proxy", "-n", "default"), tmp_path)
    env = {**running.env, **{var: str(place) for var, place in places.items()}}
    for args in (["get", "pods"], ["api-resources"], ["logs", "web"], ["get", "--raw", "/openapi/v2"]):
        done = subprocess.run([KUBECTL, *args], env=env, capture_output=True, timeout=60)
        assert done.returncode == 0 or args[1] == "--raw", (args, done.stderr)
    assert (places["HOME"] / ".kube" / "cache" / "discovery" / f"127.0.0.1_{running.port}").is_dir()
    token = running.token.encode()
    roots = [tmp_path, Path("/tmp"), lab.runtime_dir(), lab.state_dir]
    assert _files_naming_or_holding(token, roots, running.kubeconfig) == []
    in_the_vm = [t for t in _process_texts(lab, "mgmt") if token in t]
    in_the_vm += [a for _, a in lab.processes("runner", nested=True) if token in " ".join(a).encode()]
    assert in_the_vm == []


def test_a_runtime_directory_another_user_can_write_is_not_used(lab, inv, clean, tmp_path, monkeypatch):
    """XDG_RUNTIME_DIR in a shared place (a CI runner's /tmp/...): another user could move
    ``dapfab`` away and plant a kubeconfig at the path the proxy printed."""
    shared = Path(tempfile.mkdtemp(prefix="dapfab-xdg-", dir="/tmp"))
    try:
        os.chmod(shared, 0o777)
        home = tmp_path / "home"
        home.mkdir(mode=0o700)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(shared))
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("DAP_SSH_PERSIST", "0")
        running = Proxy(inv("k8s.proxy"), tmp_path)
        planted = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c",
             'mv "$1" "$1.gone" && mkdir "$1" && echo planted > "$2"', "sh",
             str(running.kubeconfig.parent), str(running.kubeconfig)],
            capture_output=True, text=True)
        assert "planted" not in running.kubeconfig.read_text(), planted
        assert running.kubeconfig.parent == home / ".cache" / "dapfab", running.kubeconfig
        assert running.kubectl("get", "pods", "-o", "name").stdout == b"pod/web\n"
        running.child.proc.send_signal(signal.SIGINT)
        assert running.child.finish()[0] == 130 and not running.kubeconfig.exists()
    finally:
        shutil.rmtree(shared)
