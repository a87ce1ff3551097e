"""Every library internal dapfab uses (dapfab/compat.py), checked against the installed
Invoke, Fabric and paramiko: a release that changes one fails here, not for a user."""

from __future__ import annotations

import inspect
import socket
import threading

import fabric
import invoke
import paramiko
import pytest

from dapfab import compat


def test_ssh_config_files_are_fabrics_defaults():
    config = fabric.Config()
    assert compat.SSH_CONFIG_FILES == (config._system_ssh_path, config._user_ssh_path)


def test_channel_internals():
    channel = paramiko.Channel(7)
    assert isinstance(compat.exit_status_event(channel), threading.Event)
    assert not compat.channel_spent(channel)
    channel.eof_received = True
    assert compat.channel_spent(channel)
    channel.out_max_packet_size = 32768
    compat.cap_packet_size(channel, 1000)
    assert compat.max_packet_size(channel) == 1000
    compat.cap_packet_size(channel, 5000)
    assert compat.max_packet_size(channel) == 1000
    # paramiko sizes each data packet by the attribute dapfab caps
    assert "out_max_packet_size" in inspect.getsource(paramiko.Channel._wait_for_send_window)
    # and sets the event when the exit status arrives
    assert "status_event.set()" in inspect.getsource(paramiko.Channel._set_closed)


def test_transport_socket():
    left, right = socket.socketpair()
    try:
        transport = paramiko.Transport(left)
        assert compat.transport_socket(transport) is left
        transport.close()
    finally:
        left.close()
        right.close()


def test_config_layers_labels_and_data(tmp_path, monkeypatch):
    (tmp_path / "invoke.yaml").write_text("dap: {runner: {vm: from-project}}\n")
    monkeypatch.setenv("INVOKE_DAP_RUNNER_VM", "from-env")
    config = invoke.Config(overrides={"dap": {"runner": {"vm": "from-flags"}}},
                           project_location=str(tmp_path))
    config.load_project()
    config.load_shell_env()
    config.set_runtime_path(None)
    layers = compat.config_layers(config)
    labels = [label for label, _ in layers]
    assert labels[:2] == ["default", "collection"]
    assert labels[-3:] == ["runtime", "command line", "set in code"] and "env" in labels
    data = dict(layers)
    assert data[str(tmp_path / "invoke.yaml")]["dap"]["runner"]["vm"] == "from-project"
    assert data["env"]["dap"]["runner"]["vm"] == "from-env"
    assert data["command line"]["dap"]["runner"]["vm"] == "from-flags"
    assert compat.config_layers({"not": "invoke"}) == []
    assert compat.env_prefix(config) == "INVOKE_"


def test_proxied_dict_and_file_places(tmp_path):
    config = invoke.Config(defaults={"dap": {"runner": {"vm": "x"}}}, project_location=str(tmp_path))
    assert compat.proxied_dict(config.dap) == {"runner": {"vm": "x"}}
    assert compat.proxied_dict({"plain": 1}) is None
    places = compat.config_file_places(config)
    assert places["user_prefix"] == "~/." and places["project_prefix"] == f"{tmp_path}/"


@pytest.mark.parametrize("remainder", [["get", "pods", "-l", "a b"], []])
def test_running_program_finds_the_argv_of_the_program_that_called_the_task(remainder):
    seen = {}

    @invoke.task
    def probe(c):
        program = compat.running_program(probe.body)
        seen["argv"] = compat.program_argv(program) if program else None
        seen["tasks"] = [t.name for t in program.tasks] if program else None

    program = invoke.Program(namespace=invoke.Collection(probe))
    program.run(["inv", "probe", "--", *remainder], exit=False)
    assert seen == {"argv": ["inv", "probe", "--", *remainder], "tasks": ["probe"]}
    seen.clear()
    probe(invoke.Context())  # from Python: no program
    assert seen == {"argv": None, "tasks": None}
