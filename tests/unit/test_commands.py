"""Command builders and input validation: exact strings, and real shells parsing them back."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dapfab.commands import (
    incus_argv,
    incus_command,
    kubectl_argv,
    kubectl_command,
    validate_context,
    validate_name,
    validate_namespace,
    validate_port,
    validate_url,
)
from dapfab.config import RunnerConfig
from dapfab.errors import ConfigError

RUNNER = RunnerConfig(ssh_host="ops@mgmt", vm_name="dap-runner")


# --------------------------------------------------------------------------- exact strings


@pytest.mark.parametrize(
    ("args", "options", "expected"),
    [
        (["get", "pods"], {}, "kubectl get pods"),
        (["get", "pods"], {"namespace": "prod"}, "kubectl --namespace prod get pods"),
        (
            ["get", "pods"],
            {"namespace": "prod", "context": "admin@prod"},
            "kubectl --namespace prod --context admin@prod get pods",
        ),
        (
            ["logs", "-f", "deploy/web"],
            {"context": "a b"},
            "kubectl --context 'a b' logs -f deploy/web",
        ),
        ([], {}, "kubectl"),
        ([""], {}, "kubectl ''"),
        (["it's"], {}, "kubectl 'it'\"'\"'s'"),
        (["$(rm -rf /)", "`id`", "*"], {}, "kubectl '$(rm -rf /)' '`id`' '*'"),
        (["-l", "app=web", "--", "a\nb"], {}, "kubectl -l app=web -- 'a\nb'"),
        # dapfab's options come first even when the user's argv has its own
        (
            ["get", "pods", "-n", "other"],
            {"namespace": "mine"},
            "kubectl --namespace mine get pods -n other",
        ),
    ],
)
def test_kubectl_command_quotes_each_word_once_with_dapfab_options_first(args, options, expected):
    assert kubectl_command(args, **options) == expected


def test_kubectl_argv_keeps_the_users_words_unchanged():
    args = ["exec", "-it", "pod", "--", "sh", "-c", "echo $HOME"]
    assert kubectl_argv(args, namespace="ns") == ["kubectl", "--namespace", "ns", *args]


@pytest.mark.parametrize(
    ("runner", "pty", "expected"),
    [
        (RUNNER, False, "incus exec dap-runner -T -- bash -lc 'kubectl get pods'"),
        (RUNNER, True, "incus exec dap-runner -t -- bash -lc 'kubectl get pods'"),
        (
            RunnerConfig(ssh_host="ops@mgmt", vm_name="local:vm1", project="team-a", incus="lxc"),
            False,
            "lxc --project team-a exec local:vm1 -T -- bash -lc 'kubectl get pods'",
        ),
        (
            {"vm": "v", "incus": "incus", "project": None},
            False,
            "incus exec v -T -- bash -lc 'kubectl get pods'",
        ),
    ],
)
def test_incus_command_is_the_reference_form(runner, pty, expected):
    assert incus_command(runner, "kubectl get pods", pty=pty) == expected


def test_incus_command_quotes_the_kubectl_command_once_more_for_the_management_shell():
    inner = kubectl_command(["get", "it's"])
    assert inner == "kubectl get 'it'\"'\"'s'"
    assert incus_argv(RUNNER, inner)[-3:] == ["bash", "-lc", inner]
    assert incus_command(RUNNER, inner) == (
        "incus exec dap-runner -T -- bash -lc "
        "'kubectl get '\"'\"'it'\"'\"'\"'\"'\"'\"'\"'\"'s'\"'\"''"
    )


@pytest.mark.parametrize("client", ["in cus", "-incus", "", "incus;id", "lxc\n", 7])
def test_a_mapping_and_a_runner_config_refuse_the_same_incus_clients(client):
    with pytest.raises(ConfigError, match="invalid incus client"):
        incus_argv({"vm": "v", "incus": client}, "true")
    with pytest.raises(ConfigError, match="invalid incus client"):
        RunnerConfig(ssh_host="ops@mgmt", vm_name="v", incus=client)


def test_builders_refuse_a_nul_in_an_argument():
    with pytest.raises(ConfigError) as caught:
        kubectl_argv(["a\x00b"])
    assert caught.value.exit_code == 2
    with pytest.raises(ConfigError):
        incus_command(RUNNER, "echo \x00")


def test_builders_refuse_a_single_string_instead_of_an_argv():
    with pytest.raises(TypeError):
        kubectl_argv("get pods")


def test_builders_revalidate_names_given_as_a_mapping():
    with pytest.raises(ConfigError):
        incus_command({"vm": "a;b"}, "true")
    with pytest.raises(ConfigError):
        incus_command({"vm": "ok", "project": "$(x)"}, "true")


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("name", ["a", "dap-runner", "A1-b2", "0", "x" * 63, "a--b"])
def test_valid_names_pass(name):
    assert validate_name("VM", name) == name


@pytest.mark.parametrize(
    "name",
    ["", "a;b", "$(x)", "`x`", "x" * 64, "-a", "a_b", "a.b", "a b", "a\n", "ä", "a:b", None, 5],
)
def test_invalid_names_are_refused_with_exit_2(name):
    with pytest.raises(ConfigError) as caught:
        validate_name("VM", name)
    assert caught.value.exit_code == 2
    assert "VM" in str(caught.value)


@pytest.mark.parametrize("name", ["local:vm", "my-remote:dap-runner", "r:" + "x" * 63])
def test_vm_names_may_carry_a_remote_prefix(name):
    assert validate_name("VM", name, allow_remote=True) == name


@pytest.mark.parametrize("name", [":vm", "remote:", "a;b:vm", "r:v:w", "r:" + "x" * 64])
def test_remote_prefixed_names_follow_the_same_rule(name):
    with pytest.raises(ConfigError):
        validate_name("VM", name, allow_remote=True)


@pytest.mark.parametrize(
    ("value", "port"), [("80", 80), (80, 80), ("65535", 65535), (" 8080 ", 8080), ("1", 1)]
)
def test_ports_are_accepted_as_strings_or_ints(value, port):
    assert validate_port(value) == port


@pytest.mark.parametrize(
    "value",
    [
        "0",
        0,
        "65536",
        "-1",
        "abc",
        "",
        "8o",
        "+80",
        "0x50",
        "٨٠",
        "1e3",
        True,
        1.5,
        None,
        "000000080",
    ],
)
def test_bad_ports_are_refused_with_exit_2(value):
    with pytest.raises(ConfigError) as caught:
        validate_port(value)
    assert caught.value.exit_code == 2


def test_port_zero_is_allowed_where_it_means_any():
    assert validate_port("0", allow_zero=True) == 0


@pytest.mark.parametrize("value", ["default", "kube-system", "a", "a1", "x" * 63])
def test_valid_namespaces_pass(value):
    assert validate_namespace(value) == value


@pytest.mark.parametrize("value", ["", "Prod", "-a", "a-", "a_b", "a b", "x" * 64, "$(x)"])
def test_invalid_namespaces_are_refused(value):
    with pytest.raises(ConfigError):
        validate_namespace(value)


@pytest.mark.parametrize("value", ["", "-x", "a\nb", "a\x1bb"])
def test_invalid_contexts_are_refused(value):
    with pytest.raises(ConfigError):
        validate_context(value)


@pytest.mark.parametrize(
    "url",
    ["http://web.default:8080/x?a=1&b=2", "https://10.0.0.1/", "http://[::1]:80/", "HTTP://svc/"],
)
def test_http_urls_pass(url):
    assert validate_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://x/",
        "file:///etc/passwd",
        "http://x/a b",
        "http://x/\n",
        "http://x/\x7f",
        "//x/",
        "http:///p",
        "http://x:99999/",
        "-K/etc/x",
        "http://x/\u0085",
    ],
)
def test_urls_curl_should_not_see_are_refused(url):
    with pytest.raises(ConfigError):
        validate_url(url)


# --------------------------------------------------------------------------- real shells

# The management host's `incus`, as a shell function (one process less per call): check
# the shape `... -- bash -lc CMD` and run CMD as `bash -lc` would parse it, without a login
# profile (which would reset PATH and cost time).
INCUS_FUNCTION = """\
incus() {
    while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done
    shift
    if [ "$#" -ne 3 ] || [ "$1" != bash ] || [ "$2" != -lc ]; then
        echo "incus stub: unexpected command after --: $*" >&2
        exit 99
    fi
    bash --noprofile --norc -c "$3"
}
"""
KUBECTL_STUB = """\
#!/bin/bash
printf '%s\\0' "$#" "$@"
"""


@pytest.fixture(scope="module")
def stub_bin(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("stub-bin")
    path = directory / "kubectl"
    path.write_text(KUBECTL_STUB)
    path.chmod(0o755)
    return directory


def run_management_shell(shell: str, script: str, stub_bin: Path) -> list[list[str]]:
    """Evaluate ``script`` as the management host's shell would; return each kubectl argv."""
    env = {"PATH": f"{stub_bin}:/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": str(stub_bin)}
    done = subprocess.run(
        [shell, "-c", INCUS_FUNCTION + script], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    fields = done.stdout.split(b"\0")
    assert fields[-1] == b""
    fields.pop()
    argvs = []
    while fields:
        count = int(fields.pop(0))
        argvs.append([field.decode("utf-8") for field in fields[:count]])
        del fields[:count]
    return argvs


NASTY = [
    "",
    " ",
    "'",
    '"',
    "\\",
    "$HOME",
    "${x:-y}",
    "$(id)",
    "`id`",
    "*",
    "?",
    "[a]",
    "~",
    "~root",
    "a b",
    "\n",
    "a\nb",
    "\t",
    "-",
    "--",
    "--all-namespaces",
    "-n",
    "--from-literal=k=$(id) x",  # a leading dash must not skip quoting
    "-o=jsonpath={.items[*].metadata.name}",
    "!",
    "!!",
    "#",
    ";",
    "&&",
    "|",
    "<",
    ">x",
    "{a,b}",
    "a=b",
    "é",
    "日本語",
    "\u2028",
    "\ufeff",
    "\x7f",
    "\x01",
    "'\"'\"'",
    "\\'",
]


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_nasty_words_reach_kubectl_unchanged_through_both_shells(shell, stub_bin):
    argvs = [[word] for word in NASTY] + [NASTY]
    script = "\n".join(incus_command(RUNNER, kubectl_command(argv)) for argv in argvs)
    assert run_management_shell(shell, script, stub_bin) == argvs


words = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30),
    st.sampled_from(NASTY),
)
argvs = st.lists(words, max_size=8)
contexts = st.one_of(
    st.none(),
    st.text(
        st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00"),
        min_size=1,
        max_size=20,
    ).filter(lambda text: not text.startswith("-")),
)
namespaces = st.one_of(
    st.none(), st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)
)
projects = st.one_of(st.none(), st.sampled_from(["p", "team-a"]))
calls = st.tuples(argvs, namespaces, contexts, projects, st.booleans())


@pytest.mark.parametrize(("shell", "examples"), [("bash", 150), ("sh", 50)])
def test_any_argv_reaches_kubectl_byte_for_byte(shell, examples, stub_bin):
    """Property: management shell, then bash -lc in the VM, give kubectl exactly the argv."""

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.lists(calls, min_size=1, max_size=4))
    def check(batch):
        script_lines, expected = [], []
        for argv, namespace, context, project, pty in batch:
            runner = RunnerConfig(ssh_host="ops@mgmt", vm_name="vm", project=project)
            command = kubectl_command(argv, namespace=namespace, context=context)
            script_lines.append(incus_command(runner, command, pty=pty))
            expected.append(kubectl_argv(argv, namespace=namespace, context=context)[1:])
        assert run_management_shell(shell, "\n".join(script_lines), stub_bin) == expected

    check()


def test_the_stub_really_checks_the_shape(stub_bin):
    """The property test could pass vacuously if the stub ignored its input: it does not."""
    with pytest.raises(AssertionError):
        run_management_shell("bash", "incus exec vm -- sh -c 'kubectl x'", stub_bin)
    assert os.access(stub_bin / "kubectl", os.X_OK)


def test_one_kubectl_argument_over_the_kernels_limit_is_refused_naming_position_and_size():
    from dapfab.commands import ARG_MAX_BYTES, kubectl_command

    assert kubectl_command(["get", "x" * ARG_MAX_BYTES])  # the largest that execs
    with pytest.raises(ConfigError) as caught:
        kubectl_command(["get", "pods", "é" * 70000])  # 140000 bytes in UTF-8
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert "argument 3 is 140000 bytes" in message and str(ARG_MAX_BYTES) in message


def test_the_runner_command_as_a_whole_may_be_longer_than_one_argument():
    from dapfab.commands import incus_command

    assert incus_command({"vm": "v"}, "echo " + "x" * 200000)
