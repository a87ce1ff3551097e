"""``config.*`` tasks: write the ``dap:`` section of an invoke.yaml, and show the effective config.

``config.doctor`` tests every hop to the runner (the checks live in :mod:`dapfab.doctor`).
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from invoke import Collection, Context, Exit, task

from dapfab import compat
from dapfab.config import (
    DEFAULTS,
    KEYS,
    KEYS_BY_PATH,
    PLACEHOLDER_HOST,
    Profile,
    RunnerConfig,
    Settings,
    expand_path,
    resolve,
)
from dapfab.configfile import export_lines, write_dap_section
from dapfab.errors import ConfigError, DapError, shown
from dapfab.tasks.edge import reported, resolve_runners

# The keeper client, the connection pool and the doctor are imported in the tasks that use
# them: `inv --list` and `--help` import this module and need none of them.

# The keys config.init writes: (dotted path under dap, task parameter, prompt).
# What config.init asks for: the runner keys that have a flag (--ssh-host -> ssh_host ...);
# ASK_KEYS of them on a terminal, the others only when given as flags (--persist).
INIT_KEYS = tuple(
    (key.path, key.flag.lstrip("-").replace("-", "_"), key.help)
    for key in KEYS
    if key.section in ("runner", "ssh") and key.flag
)
ASK_KEYS = {path for path, _, _ in INIT_KEYS if path.startswith("runner.")}


def _config_basename(c: Context) -> str:
    return c.config.file_prefix or c.config.prefix or "invoke"


def _yaml_file(found: str | None, fallback: Path, where: str) -> Path:
    """The file Invoke loaded for a layer if it is YAML, else ``fallback``; refuse JSON/.py.

    (Invoke 2.2 records a missing ``invoke.py`` as found, hence the existence check.)
    """
    if not found or not os.path.exists(found):
        return fallback
    found_path = Path(found)
    if found_path.suffix in (".yaml", ".yml"):
        return found_path
    raise ConfigError(
        f"the {where} config is {found_path}, which dapfab cannot edit (YAML only)",
        hint="add the dap: section to it by hand, or write another file with --path",
    )


def init_target(c: Context, path: str | None = None, user: bool = False) -> Path:
    """Where ``config.init`` writes: ``--path``, ``--user``, else the project's invoke.yaml."""
    if path and user:
        raise ConfigError("--path and --user conflict", hint="give only one of them")
    name = _config_basename(c)
    if path:
        return Path(expand_path(path))
    places = compat.config_file_places(c.config)
    if user:
        prefix = places["user_prefix"] or "~/."
        fallback = Path(expand_path(f"{prefix}{name}.yaml"))
        return _yaml_file(places["user_path"], fallback, "user")
    prefix = places["project_prefix"]
    directory = Path(prefix) if prefix else Path.cwd()
    return _yaml_file(places["project_path"], directory / f"{name}.yaml", "project")


def _ask(label: str, current: Any, *, required: bool) -> str | None:
    """Ask on the terminal; an empty answer keeps ``current`` (the placeholder is no value)."""
    shown = "" if current is None or current == PLACEHOLDER_HOST else str(current)
    while True:
        try:
            answer = input(f"{label} [{shown}]: ").strip()
        except EOFError:
            raise ConfigError(
                "no answer on the terminal", hint="give the values as flags instead"
            ) from None
        if answer or shown or not required:
            return answer or shown or None
        print("a value is needed here", file=sys.stderr)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        section, name = dotted.split(".", 1)
        nested.setdefault(section, {})[name] = value
    return nested


@task(
    auto_shortflags=False,
    help={
        "path": "write this YAML file instead of the project's invoke.yaml",
        "user": "write the per-user file ~/.invoke.yaml instead of the project's",
        "ssh_host": "management host: user@host[:port] or an ssh_config alias",
        "ssh_key": "private key file for the SSH hops (referenced, never copied)",
        "vm": "runner VM name, the incus instance (optionally remote:name)",
        "gateway": "bastion host the SSH connection jumps through: user@host[:port]",
        "persist": "seconds a keeper holds the connection after the last call (0: no keeper)",
        "force": "overwrite values the file already sets differently",
        "env": "print `export DAP_...=...` lines for a shell instead of writing a file",
    },
)
@reported
def init(
    c: Context,
    path: str | None = None,
    user: bool = False,
    ssh_host: str | None = None,
    ssh_key: str | None = None,
    vm: str | None = None,
    gateway: str | None = None,
    persist: str | None = None,
    force: bool = False,
    env: bool = False,
) -> None:
    """Write the runner settings (dap: section) to invoke.yaml, or print them as env vars.

    On a terminal, asks for each value with the current one as default; otherwise writes
    the values given as flags. Keeps every other key and comment, never overwrites a
    different value without --force, writes atomically with mode 0600.
    """
    flags = {"ssh_host": ssh_host, "ssh_key": ssh_key, "vm": vm, "gateway": gateway,
             "persist": persist}
    target = None if env else init_target(c, path, user)
    current = resolve(c.config, profile_from_env=False)
    chosen = _chosen_values(flags, current)
    if not chosen:
        raise ConfigError(
            "nothing to write",
            hint="give --ssh-host, --ssh-key, --vm, --gateway or --persist (or run on a terminal "
            "to be asked)",
        )
    # Validate with the same rules as a connection would, before anything is written.
    effective = RunnerConfig.from_settings(
        resolve(c.config, profile_from_env=False, overrides=chosen)
    )
    if "ssh.persist" in chosen:  # written as the number it is, not as a string
        seconds = effective.persist
        chosen["ssh.persist"] = int(seconds) if seconds.is_integer() else seconds
    values = _nest(chosen)
    if env:
        for line in export_lines(values):
            print(line)
        return
    assert target is not None
    written = write_dap_section(target, values, force=force)
    print(f"wrote {', '.join('dap.' + key for key in chosen)} to {written}")
    if effective.is_placeholder:
        print(
            f"note: dap.runner.ssh_host is still the placeholder {PLACEHOLDER_HOST}; "
            "set it with --ssh-host",
            file=sys.stderr,
        )
    if effective.ssh_key and not os.path.exists(effective.ssh_key) and "runner.ssh_key" in chosen:
        print(f"note: the key file {effective.ssh_key} does not exist (yet)", file=sys.stderr)


def _chosen_values(flags: dict[str, Any], current: Settings) -> dict[str, Any]:
    """What config.init writes: the flags given, and on a terminal the answers asked for."""
    chosen: dict[str, Any] = {}
    interactive = sys.stdin.isatty()
    for dotted, parameter, label in INIT_KEYS:
        value = flags[parameter] if flags[parameter] not in (None, "") else None
        if value is None and interactive and dotted in ASK_KEYS:
            value = _ask(label, current.value(dotted), required=parameter == "ssh_host")
        if value is not None:
            chosen[dotted] = value
    return chosen


def show_lines(settings: Settings) -> list[str]:
    """The table ``config.show`` prints: one ``key  value  source`` line per setting."""
    rows = []
    for setting in settings.settings:
        value = setting.value
        if KEYS_BY_PATH[setting.path].field in ("ssh_key", "known_hosts") and isinstance(
            value, str
        ):
            value = expand_path(value) if value else value
        shown = "(none)" if value is None or value == "" else str(value)
        rows.append((f"dap.{setting.path}", shown, setting.source))
    key_width = max(len(row[0]) for row in rows)
    value_width = max(len(row[1]) for row in rows)
    lines = [f"{key:<{key_width}}  {value:<{value_width}}  {source}" for key, value, source in rows]
    known = ", ".join(settings.profiles) if settings.profiles else "none defined"
    profile = settings.profile or "(none)"
    return [f"profile: {profile}  (profiles: {known})", *lines]


@task(
    auto_shortflags=False,
    help={"runner": "show the settings of this named profile (dap.runners.NAME)"},
)
@reported
def show(c: Context, runner: str | None = None) -> None:
    """Show the effective dap settings and where each one comes from (each runner's, for
    --runner a,b or @GROUP)."""
    for name in _each_runner(c, runner):
        _show_one(c, name)


def _each_runner(c: Context, runner: str | None) -> Iterator[str | None]:
    """The profiles ``--runner`` names (None: the default runner), each after a
    ``== runner NAME ==`` header when there are several."""
    names = resolve_runners(c, runner)
    for index, name in enumerate(names or [None]):
        if names is not None and len(names) > 1:
            print(("\n" if index else "") + f"== runner {name} ==", flush=True)
        yield name


def _show_one(c: Context, runner: str | None) -> None:
    settings = resolve(c.config, runner=runner)
    for line in show_lines(settings):
        print(shown(line))
    config = Profile.from_settings(settings).runner  # checks every value
    if config.is_placeholder:
        print(
            f"note: {PLACEHOLDER_HOST} is a placeholder; dapfab will not connect until you "
            "run `inv config.init` or set DAP_RUNNER_SSH_HOST",
            file=sys.stderr,
        )
    elif config.persist:
        from dapfab.keeper import client

        try:
            pid = client.status(config)
            print(f"keeper: {f'alive (pid {pid})' if pid is not None else 'none'}")
        except DapError as err:
            print(shown(f"keeper: unavailable ({err.message})"))


@task(
    auto_shortflags=False,
    help={"runner": "stop the keeper of this named profile (dap.runners.NAME)",
          "all": "stop every keeper of this user"},
)
@reported
def disconnect(c: Context, runner: str | None = None, all: bool = False) -> None:  # noqa: A002
    """Stop the keeper that holds this config's connection (or every keeper with --all).

    A keeper (dap.ssh.persist) keeps the SSH connection and its helpers in the VM so that
    later calls are warm; commands running through it end.
    """
    from dapfab.keeper import client

    config = None if all else RunnerConfig.from_invoke_config(c.config, runner=runner)
    pids = client.stop(config)
    print(f"stopped {len(pids)} keeper(s)" + (f" (pid {', '.join(map(str, pids))})" if pids else ""))


@task(
    auto_shortflags=False,
    help={"runner": "check this named profile (dap.runners.NAME) instead of dap.runner"},
)
@reported
def doctor(c: Context, runner: str | None = None) -> None:
    """Test every hop to the runner VM; say which one fails and how to fix it.

    One line per check (OK/FAIL/SKIP): config, key, gateway, management host, login shell,
    incus, VM, bash, launcher tools, kubectl, kubeconfig, API server, curl. Exits 0 when
    all pass, else with the code of the first failing check's hop.
    """
    from dapfab.connection import POOL
    from dapfab.doctor import doctor as run_doctor

    first_failure = 0
    for name in _each_runner(c, runner):

        def load(name: str | None = name) -> RunnerConfig:
            return Profile.resolve(c.config, runner=name).runner  # checks every value

        try:
            code = run_doctor(load, emit=lambda line: print(line, flush=True))
        finally:
            POOL.close_all()
        first_failure = first_failure or code
    if first_failure:
        raise Exit(code=first_failure)


ns = Collection("config", init, show, doctor, disconnect)
ns.configure({"dap": copy.deepcopy(DEFAULTS)})
