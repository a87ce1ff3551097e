"""Bad input: refused before anything is sent, exit 2, one clear line.

"Nothing sent" is checked on the lab's own sshd logs: no public-key login was accepted on
the bastion or the management host while the refused command ran.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from trust_helpers import sshd_logins

pytestmark = pytest.mark.lab

LONG = "a" * 64
BAD_NAMES = ["a;b", "$(x)", "`id`", "a b", "-rf", "a/b", LONG, "é", "a\nb", "a:b:c"]


def assert_refused(done, *words: str) -> None:
    lines = done.err.strip().splitlines()
    assert done.returncode == 2, done.err
    assert len(lines) == 1, done.err
    assert lines[0].startswith("dapfab: ") and lines[0].endswith(")"), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in done.err


@pytest.fixture
def nothing_sent(lab):
    """Asserts, after the test, that no sshd of the lab accepted a login during it."""
    before = sshd_logins(lab)
    yield
    assert sshd_logins(lab) == before, "something was sent to a lab host"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_vm_name_is_refused(cli, nothing_sent, name):
    assert_refused(cli("k8s.kubectl", "--", "get", "pods", env={"DAP_RUNNER_VM": name}),
                   "invalid VM name")


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_project_name_is_refused(cli, nothing_sent, name):
    assert_refused(cli("k8s.kubectl", "--", "get", "pods", env={"DAP_RUNNER_PROJECT": name}),
                   "invalid project name")


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_profile_name_is_refused(cli, nothing_sent, name):
    done = cli("k8s.kubectl", f"--runner={name}", "--", "get", "pods")
    assert_refused(done, "invalid profile name")


def test_empty_vm_name_in_a_config_file_is_refused(cli, nothing_sent, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text('dap:\n  runner:\n    vm: ""\n')
    done = cli("-f", str(config), "k8s.kubectl", "--", "get", "pods", env={"DAP_RUNNER_VM": ""})
    assert_refused(done, "invalid VM name ''")


def test_unknown_runner_profile_is_refused(cli, nothing_sent):
    assert_refused(cli("k8s.kubectl", "--runner=nosuch", "--", "get", "pods"),
                   "unknown runner profile 'nosuch'")


@pytest.mark.parametrize("namespace", ["A", "a;b", "-x", "--help", "", LONG])
def test_invalid_namespace_is_refused(cli, nothing_sent, namespace):
    assert_refused(cli("k8s.kubectl", f"--namespace={namespace}", "--", "get", "pods"),
                   "invalid namespace")


# Every task that takes -n or --context refuses what k8s.kubectl refuses (one check each).
NAMESPACE_TASKS = {"proxy": ("k8s.proxy",), "forward": ("k8s.forward", "pod/web", "8080"),
                   "kubectl": ("k8s.kubectl", "--", "get", "pods")}


@pytest.mark.parametrize("task", NAMESPACE_TASKS)
@pytest.mark.parametrize("namespace", ["default\nusers: []", "A", ""])
def test_every_task_refuses_an_invalid_namespace(cli, nothing_sent, task, namespace):
    name, *rest = NAMESPACE_TASKS[task]
    assert_refused(cli(name, "-n", namespace, *rest), "invalid namespace")


@pytest.mark.parametrize("task", NAMESPACE_TASKS)
@pytest.mark.parametrize("context", ["a\nb", "-x", ""])
def test_every_task_refuses_an_invalid_context(cli, nothing_sent, task, context):
    name, *rest = NAMESPACE_TASKS[task]
    assert_refused(cli(name, f"--context={context}", *rest), "invalid kubectl context")


@pytest.mark.parametrize("value", ["-n", "--runner"])
def test_a_value_that_is_one_of_the_tasks_own_flags_is_invokes_parser_error(cli, nothing_sent, value):
    """Invoke splits ``--flag=VALUE`` and then parses VALUE as a token: when it is one of the
    task's own flags, Invoke's parser refuses the line itself (exit 1, docs/design.md §5)."""
    done = cli("k8s.kubectl", f"--namespace={value}", "--", "get", "pods")
    assert done.returncode == 1, done.err
    assert "needed value" in done.err


@pytest.mark.parametrize("port", ["0", "65536", "99999999999", "-1", "80a", "0x50", "", " 80 x",
                                  "٣"])
def test_bad_forward_port_is_refused_by_dapfab_not_invoke(cli, nothing_sent, port):
    assert_refused(cli("k8s.forward", "pod/web", f"--port={port}"), "invalid port")


@pytest.mark.parametrize("flag", ["--local-port", "--laptop-port"])
@pytest.mark.parametrize("port", ["65536", "-5", "x", "1.5"])
def test_bad_local_ports_are_refused(cli, nothing_sent, flag, port):
    assert_refused(cli("k8s.forward", "pod/web", "8080", f"{flag}={port}"), "invalid")


@pytest.mark.parametrize("url", ["http://a b/", "http://web/\x01", "http://web/\t",
                                 "http://web/\u0085", "ftp://web/", "http:///path", "",
                                 "http://web:99999/"])
def test_bad_url_is_refused(cli, nothing_sent, url):
    assert_refused(cli("k8s.curl", f"--url={url}"), "invalid URL")


def test_key_path_that_is_a_directory_is_refused(cli, nothing_sent, tmp_path):
    assert_refused(cli("k8s.kubectl", "--", "get", "pods",
                       env={"DAP_RUNNER_SSH_KEY": str(tmp_path)}), "not a readable file")


def test_conflicting_flags_are_refused(cli, nothing_sent, tmp_path):
    done = cli("config.init", f"--path={tmp_path / 'x.yaml'}", "--user", "--ssh-host=root@h")
    assert_refused(done, "--path and --user conflict")
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.parametrize("bad", ["dap: [unclosed\n", "dap:\n  runner:\n    vm: a\n   ssh: b\n",
                                 "dap:\n\tvm: x\n"])
def test_malformed_invoke_yaml_under_dap_names_file_and_line(cli, nothing_sent, tmp_path, bad):
    (tmp_path / "invoke.yaml").write_text(bad)
    done = cli("k8s.kubectl", "--", "get", "pods", program="dap", cwd=tmp_path)
    assert_refused(done, str(tmp_path / "invoke.yaml"))
    assert re.search(r"invoke\.yaml:\d+", done.err)


def test_malformed_invoke_yaml_under_inv_fails_inside_invoke(cli, nothing_sent, tmp_path):
    """Invoke itself reads the project file before dapfab runs: it fails, nothing is sent."""
    (tmp_path / "tasks.py").write_text("from dapfab.tasks import ns\n")
    (tmp_path / "invoke.yaml").write_text("dap: [unclosed\n")
    done = cli("k8s.kubectl", "--", "get", "pods", cwd=tmp_path)
    assert done.returncode != 0
    assert "yaml" in done.err.lower() or "invoke.yaml" in done.err


# ---------------------------------------------------------------------- random junk

NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}")
NAMESPACE_OK = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
JUNK = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
               max_size=80)


def port_ok(text: str) -> bool:
    return text.strip().isascii() and text.strip().isdigit() and 0 < int(text.strip()) < 65536


FLAG_JUNK = st.one_of(
    st.tuples(st.just("kubectl-runner"), JUNK),
    st.tuples(st.just("kubectl-namespace"), JUNK.filter(lambda t: not NAMESPACE_OK.fullmatch(t))),
    st.tuples(st.just("forward-port"), JUNK.filter(lambda t: not port_ok(t))),
    st.tuples(st.just("forward-port"), st.integers().filter(lambda n: not 0 < n < 65536).map(str)),
    st.tuples(st.just("forward-local-port"),
              JUNK.filter(lambda t: not t.strip().isdigit())),
    st.tuples(st.just("vm"), JUNK.filter(lambda t: t != "" and not NAME_OK.fullmatch(t))),
)


# Invoke re-parses the VALUE of --flag=VALUE as a token: a task's own flag there is Invoke's
# parser error (exit 1, tested above), not junk for dapfab to judge.
TASK_FLAGS = {"-n", "--namespace", "--context", "--runner", "--args", "--target", "--port",
              "--local-port", "--laptop-port"}


def junk_argv(kind: str, value: str) -> tuple[list[str], dict[str, str]]:
    if kind == "kubectl-runner":
        return ["k8s.kubectl", f"--runner={value}", "--", "get", "pods"], {}
    if kind == "kubectl-namespace":
        return ["k8s.kubectl", f"--namespace={value}", "--", "get", "pods"], {}
    if kind == "forward-port":
        return ["k8s.forward", "pod/web", f"--port={value}"], {}
    if kind == "forward-local-port":
        return ["k8s.forward", "pod/web", "8080", f"--local-port={value}"], {}
    return ["k8s.kubectl", "--", "get", "pods"], {"DAP_RUNNER_VM": value}


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
@given(case=FLAG_JUNK)
def test_random_junk_in_names_and_ports_exits_2_and_sends_nothing(cli, lab, case):
    kind, value = case
    if kind == "kubectl-runner" and value == "":
        value = "-"  # an empty --runner means the default profile, not junk
    assume(value.partition("=")[0] not in TASK_FLAGS)
    argv, env = junk_argv(kind, value)
    before = sshd_logins(lab)
    done = cli(*argv, env=env)
    assert done.returncode == 2, (argv, env, done.err)
    assert len(done.err.strip().splitlines()) == 1, done.err
    assert done.err.startswith("dapfab: ") and "Traceback" not in done.err
    assert sshd_logins(lab) == before
