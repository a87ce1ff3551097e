"""How to reach a runner: the ``dap`` config tree, its layering, and :class:`RunnerConfig`.

Precedence, lowest first (docs/design.md §2)::

    built-in DEFAULTS < /etc/invoke.yaml < ~/.invoke.yaml < project invoke.yaml
      < runtime file (inv -f) < profile dap.runners.NAME.* < DAP_* env vars < task flags

Invoke merges the file layers itself; everything above them is done here, in one place
(:func:`resolve`), which also records where every value came from for ``config.show``.

A profile (``--runner NAME`` or ``DAP_RUNNER``) is a mapping under ``dap.runners.NAME``.
Its top-level keys are ``dap.runner`` keys (``ssh_host``, ``ssh_key``, ``vm``, ``gateway``,
``incus``, ``project``); it may also hold ``ssh:`` and ``kubectl:`` sub-mappings that overlay
``dap.ssh.*`` and ``dap.kubectl.*`` (a production runner usually has its own namespace or
context). Unknown keys in ``dap.runner``, ``dap.ssh``, ``dap.kubectl`` or a profile are
refused (exit 2): a typo such as ``vm_name:`` would otherwise be ignored silently.

``DAP_*`` variables that are set but empty count as unset.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dapfab import compat
from dapfab.commands import (
    validate_context,
    validate_incus_client,
    validate_name,
    validate_namespace,
    validate_seconds,
)
from dapfab.errors import ConfigError

PLACEHOLDER_HOST = "user@mgmt.example.com"

HOST_KEY_POLICIES = ("reject", "accept-new")


@dataclass(frozen=True)
class Key:
    """One setting, declared once: its dotted path under ``dap``, env var, built-in default,
    what it is (help), the RunnerConfig field it fills and the task flag that sets it.
    :data:`DEFAULTS`, config.init's questions, the README table and the example
    ``invoke.yaml`` are derived from or checked against :data:`KEYS`."""

    path: str
    env: str
    default: Any
    help: str
    field: str | None = None
    flag: str | None = None

    @property
    def section(self) -> str:
        return self.path.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.path.split(".", 1)[1]


KEYS: tuple[Key, ...] = (
    Key("runner.ssh_host", "DAP_RUNNER_SSH_HOST", PLACEHOLDER_HOST,
        "management host (user@host[:port] or ssh_config alias)", "ssh_host", "--ssh-host"),
    Key("runner.ssh_key", "DAP_RUNNER_SSH_KEY", "~/.ssh/id_ed25519", "private key file",
        "ssh_key", "--ssh-key"),
    Key("runner.vm", "DAP_RUNNER_VM", "dap-runner", "runner VM name (incus instance)",
        "vm_name", "--vm"),
    Key("runner.gateway", "DAP_RUNNER_SSH_GATEWAY", None,
        "bastion host (user@host[:port]; empty for none)", "gateway", "--gateway"),
    Key("runner.incus", "DAP_RUNNER_INCUS", "incus",
        "client on the management host (lxc for LXD)", "incus"),
    Key("runner.project", "DAP_RUNNER_PROJECT", None, "incus --project", "project"),
    Key("ssh.known_hosts", "DAP_SSH_KNOWN_HOSTS", "~/.ssh/known_hosts",
        "known_hosts file checked for every hop", "known_hosts"),
    Key("ssh.host_key_policy", "DAP_SSH_HOST_KEY_POLICY", "reject",
        "reject or accept-new", "host_key_policy"),
    Key("ssh.connect_timeout", "DAP_SSH_CONNECT_TIMEOUT", 10,
        "seconds to wait for each SSH connection", "connect_timeout"),
    Key("ssh.persist", "DAP_SSH_PERSIST", 60,
        "seconds a keeper holds the connection after its last call (0: no keeper)", "persist",
        "--persist"),
    Key("fanout.parallel", "DAP_FANOUT_PARALLEL", 10,
        "runners a fan-out (--runner a,b or @group) runs at once", None, "--parallel"),
    Key("kubectl.namespace", "DAP_KUBECTL_NAMESPACE", None, "kubectl --namespace", None,
        "--namespace"),
    Key("kubectl.context", "DAP_KUBECTL_CONTEXT", None, "kubectl --context", None, "--context"),
    Key("kubectl.laptop_files", "DAP_KUBECTL_LAPTOP_FILES", True,
        "ship laptop paths in kubectl's file arguments to the VM (true/false)", None,
        "--no-laptop-files"),
)
KEYS_BY_PATH = {key.path: key for key in KEYS}
KEYS_BY_FIELD = {key.field: key for key in KEYS if key.field}
# An override may name a key by its config-file leaf (``vm``), field (``vm_name``) or path.
KEYS_BY_NAME = {**{key.path.rsplit(".", 1)[-1]: key for key in KEYS}, **KEYS_BY_PATH, **KEYS_BY_FIELD}


def _defaults() -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key in KEYS:
        tree.setdefault(key.section, {})[key.name] = key.default
    tree["runners"] = {}
    tree["groups"] = {}
    return tree


DEFAULTS: dict[str, Any] = _defaults()
PROFILE_ENV = "DAP_RUNNER"

_SECTIONS = ("runner", "ssh", "fanout", "kubectl")
_HOST_BAD = re.compile(r"[\s\x00-\x1f\x7f]")
def default_ssh_key() -> str:
    """The built-in key path, expanded: a missing default key is not an error (agent)."""
    return expand_path(DEFAULTS["runner"]["ssh_key"])


def expand_path(path: str) -> str:
    """``~`` expanded and made absolute (relative paths are taken from the current dir)."""
    return os.path.abspath(os.path.expanduser(path))


# --------------------------------------------------------------------------- validation


def _host(kind: str, value: Any, hint_key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"{kind} is empty or not a string: {value!r}",
            hint=f"set {hint_key} to user@host[:port] or an ssh_config alias",
        )
    if _HOST_BAD.search(value) or value.startswith("-"):
        raise ConfigError(
            f"invalid {kind} {value!r}: whitespace, control characters or a leading '-'",
            hint=f"set {hint_key} to user@host[:port] or an ssh_config alias",
        )
    hostport = value.rsplit("@", 1)[-1]
    if not hostport:
        raise ConfigError(f"invalid {kind} {value!r}: no host", hint=f"set {hint_key}")
    if hostport.count(":") == 1:
        port = hostport.split(":", 1)[1]
        if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"invalid {kind} {value!r}: port {port!r} is not 1-65535",
                hint=f"set {hint_key} to user@host[:port]",
            )
    return value


def _path(kind: str, value: Any, hint_key: str) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigError(f"invalid {kind} path {value!r}", hint=f"set {hint_key} to a file path")
    return expand_path(value)


def _timeout(value: Any) -> float:
    return validate_seconds(value, what="connect timeout (dap.ssh.connect_timeout)")


def _optional(value: Any) -> Any:
    """Empty strings in config files mean "not set", like YAML ``null``."""
    return None if value == "" else value


@dataclass(frozen=True)
class RunnerConfig:
    """How to reach one runner VM; connections are shared by its
    :class:`~dapfab.identity.ConnectionIdentity` (docs/design.md §10).

    Validated on construction (raises :class:`~dapfab.errors.ConfigError`, exit 2); paths
    are expanded to absolute paths and the timeout becomes a float.
    """

    ssh_host: str = PLACEHOLDER_HOST
    ssh_key: str | None = DEFAULTS["runner"]["ssh_key"]
    vm_name: str = DEFAULTS["runner"]["vm"]
    gateway: str | None = None
    incus: str = DEFAULTS["runner"]["incus"]
    project: str | None = None
    known_hosts: str = DEFAULTS["ssh"]["known_hosts"]
    host_key_policy: str = DEFAULTS["ssh"]["host_key_policy"]
    connect_timeout: float = field(default=float(DEFAULTS["ssh"]["connect_timeout"]))
    persist: float = field(default=float(DEFAULTS["ssh"]["persist"]))

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "ssh_host", _host("management host", self.ssh_host, "dap.runner.ssh_host"))
        gateway = _optional(self.gateway)
        if gateway is not None:
            gateway = _host("gateway", gateway, "dap.runner.gateway")
        put(self, "gateway", gateway)
        key = _optional(self.ssh_key)
        put(self, "ssh_key", None if key is None else _path("key", key, "dap.runner.ssh_key"))
        put(self, "vm_name", validate_name("VM", self.vm_name, allow_remote=True))
        project = _optional(self.project)
        put(self, "project", None if project is None else validate_name("project", project))
        validate_incus_client(self.incus)
        put(self, "known_hosts", _path("known_hosts", self.known_hosts, "dap.ssh.known_hosts"))
        policy = self.host_key_policy
        policy = policy.strip().lower() if isinstance(policy, str) else policy
        if policy not in HOST_KEY_POLICIES:
            raise ConfigError(
                f"invalid host key policy {self.host_key_policy!r}",
                hint="set dap.ssh.host_key_policy to reject or accept-new",
            )
        put(self, "host_key_policy", policy)
        put(self, "connect_timeout", _timeout(self.connect_timeout))
        put(self, "persist", validate_seconds(
            self.persist, what="persist time (dap.ssh.persist)", allow_zero=True
        ))

    @property
    def is_placeholder(self) -> bool:
        """True while ``ssh_host`` is the built-in placeholder: never connect to it."""
        return self.ssh_host == PLACEHOLDER_HOST

    def check_configured(self) -> None:
        """Raise ConfigError (exit 2) if the management host is still the placeholder."""
        if self.is_placeholder:
            raise ConfigError(
                f"no management host configured ({PLACEHOLDER_HOST} is a placeholder)",
                hint="run `inv config.init` or set DAP_RUNNER_SSH_HOST",
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RunnerConfig:
        """Built-in defaults overlaid with the ``DAP_RUNNER_*`` and ``DAP_SSH_*`` variables."""
        return cls.from_settings(resolve({}, environ=environ, profile_from_env=False))

    @classmethod
    def from_invoke_config(
        cls,
        config: Any,
        *,
        runner: str | None = None,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> RunnerConfig:
        """Build from an Invoke ``Config``/``Context`` or a plain dict with the full layering.

        ``runner`` names a profile (else ``DAP_RUNNER``); ``overrides`` are task flags keyed
        by field name (``vm_name``), config-file key (``vm``) or dotted path (``runner.vm``);
        ``None`` values are ignored.
        """
        return cls.from_settings(
            resolve(config, runner=runner, environ=environ, overrides=overrides)
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> RunnerConfig:
        """Build from the result of :func:`resolve`."""
        return cls(**{key.field: settings.value(key.path) for key in KEYS if key.field})


@dataclass(frozen=True)
class Profile:
    """What one runner profile (None: the default runner) resolves to, checked, resolved
    once per call: how to reach the runner, and kubectl's configured defaults."""

    name: str | None
    runner: RunnerConfig
    namespace: str | None
    context: str | None
    laptop_files: bool

    @classmethod
    def resolve(
        cls,
        config: Any,
        *,
        runner: str | None = None,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Profile:
        """The layered settings of ``runner`` (else ``DAP_RUNNER``), as :func:`resolve`
        layers them, built into one checked object (ConfigError, exit 2)."""
        return cls.from_settings(resolve(config, runner=runner, environ=environ, overrides=overrides))

    @classmethod
    def from_settings(cls, settings: Settings) -> Profile:
        """Build from the result of :func:`resolve`, checking every value."""
        namespace = _optional(settings.value("kubectl.namespace"))
        context = _optional(settings.value("kubectl.context"))
        return cls(
            name=settings.profile,
            runner=RunnerConfig.from_settings(settings),
            namespace=None if namespace is None else validate_namespace(namespace),
            context=None if context is None else validate_context(context),
            laptop_files=_switch(settings.value("kubectl.laptop_files")),
        )


def kubectl_defaults(
    config: Any,
    *,
    runner: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[str | None, str | None]:
    """The configured ``(namespace, context)`` for kubectl: files < profile < DAP_KUBECTL_*."""
    profile = Profile.resolve(config, runner=runner, environ=environ)
    return profile.namespace, profile.context


def _switch(value: Any) -> bool:
    """``dap.kubectl.laptop_files``: whether kubectl's file arguments name laptop paths
    (docs/design.md §15); true unless set to false."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in ("true", "yes", "on", "1"):
        return True
    if word in ("false", "no", "off", "0"):
        return False
    raise ConfigError(f"invalid dap.kubectl.laptop_files {value!r}", hint="set it to true or false")


# --------------------------------------------------------------------------- layering


@dataclass(frozen=True)
class Setting:
    """One effective value and where it came from (for ``config.show``)."""

    path: str
    value: Any
    source: str


@dataclass(frozen=True)
class Settings:
    """Every effective ``dap`` setting, the chosen profile and the known profile names."""

    settings: tuple[Setting, ...]
    profile: str | None
    profiles: tuple[str, ...]

    def value(self, path: str) -> Any:
        for setting in self.settings:
            if setting.path == path:
                return setting.value
        raise KeyError(path)

    def source(self, path: str) -> str:
        for setting in self.settings:
            if setting.path == path:
                return setting.source
        raise KeyError(path)


def _plain(obj: Any) -> Any:
    """A deep plain-dict copy of a config tree (Invoke DataProxy, Mapping, or leaf)."""
    inner = compat.proxied_dict(obj)
    if inner is not None:
        return _plain(inner)
    if isinstance(obj, Mapping):
        return {key: _plain(obj[key]) for key in obj}
    if hasattr(obj, "keys") and hasattr(obj, "__getitem__"):
        return {key: _plain(obj[key]) for key in obj.keys()}
    return copy.copy(obj)


def _unwrap(config: Any) -> Any:
    """An Invoke ``Context`` carries its ``Config`` in ``.config``."""
    try:
        from invoke.context import Context  # here: importing dapfab.config loads no Invoke
    except ImportError:  # pragma: no cover - invoke is a dependency
        return config
    return config.config if isinstance(config, Context) else config


def _merge(base: dict[str, Any], update: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Deep-merge ``update`` into ``base``; sub-trees that are mappings by default stay so."""
    for key, value in update.items():
        if isinstance(base.get(key), dict):
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{where}.{key} must be a mapping, not {value!r}",
                    hint=f"fix {where}.{key} in your invoke.yaml (see `inv config.show`)",
                )
            base[key] = _merge(dict(base[key]), value, f"{where}.{key}")
        else:
            base[key] = copy.deepcopy(value)
    return base


def _dap_tree(config: Any) -> dict[str, Any]:
    root = _plain(_unwrap(config)) if config is not None else {}
    if not isinstance(root, Mapping):
        raise ConfigError(f"config is not a mapping: {type(root).__name__}")
    dap = root.get("dap") or {}
    if not isinstance(dap, Mapping):
        raise ConfigError(f"dap must be a mapping, not {dap!r}", hint="fix dap: in invoke.yaml")
    merged = _merge(copy.deepcopy(DEFAULTS), dap, "dap")
    for section in _SECTIONS:
        known = {key.name for key in KEYS if key.section == section}
        _refuse_unknown(merged[section], known, f"dap.{section}")
    return merged


def _refuse_unknown(mapping: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(str(key) for key in mapping if key not in known)
    if unknown:
        raise ConfigError(
            f"unknown key {where}.{unknown[0]}",
            hint=f"known keys under {where}: {', '.join(sorted(known))}",
        )


def _layers(config: Any) -> list[tuple[str, dict[str, Any]]]:
    """Invoke's config layers in merge order, each with a human label (empty if not Invoke)."""
    return compat.config_layers(_unwrap(config))


def _lookup(tree: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    for part in path:
        if not isinstance(tree, Mapping) or part not in tree:
            return False, None
        tree = tree[part]
    return True, tree


def _source_of(config: Any, layers: list[tuple[str, dict[str, Any]]], path: tuple[str, ...]) -> str:
    """Label of the highest layer that sets ``path`` (``("dap", "runner", "vm")``)."""
    if not layers:
        found, _ = _lookup(_plain(_unwrap(config)) if config is not None else {}, path)
        return "config" if found else "default"
    source = "default"
    for label, data in layers:
        found, value = _lookup(data, path)
        if not found:
            continue
        if label == "collection":
            default_found, default = _lookup({"dap": DEFAULTS}, path)
            label = "default" if default_found and default == value else "tasks collection"
        elif label == "env":
            prefix = compat.env_prefix(_unwrap(config))
            label = "env " + prefix + "_".join(path).upper()
        source = label
    return source


def resolve(
    config: Any,
    *,
    runner: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    profile_from_env: bool = True,
) -> Settings:
    """Every effective ``dap`` setting with its source, layered as the module doc says.

    ``config`` is an Invoke ``Config``/``Context``, a plain dict with a ``dap`` key, or
    ``None``. Raises ConfigError for an unknown profile, an unknown key or a bad shape.
    """
    environ = os.environ if environ is None else environ
    tree = _dap_tree(config)
    layers = _layers(config)
    values: dict[str, tuple[Any, str]] = {}
    for key in KEYS:
        values[key.path] = (
            tree[key.section][key.name],
            _source_of(config, layers, ("dap", key.section, key.name)),
        )

    profiles_tree = tree["runners"]
    profiles = tuple(sorted(str(name) for name in profiles_tree))
    profile = runner if runner not in (None, "") else None
    if profile is None and profile_from_env:
        profile = environ.get(PROFILE_ENV) or None
    if profile is not None:
        values.update(_profile_settings(config, layers, profiles_tree, profile))

    for key in KEYS:
        value = environ.get(key.env)
        if value:
            values[key.path] = (value, f"env {key.env}")

    for name, value in (overrides or {}).items():
        if value is None:
            continue
        key = KEYS_BY_NAME.get(name)
        if key is None:
            raise TypeError(f"unknown override {name!r}")
        values[key.path] = (value, f"flag {key.flag}" if key.flag else "flag")

    return Settings(
        settings=tuple(Setting(path, *values[path]) for path in KEYS_BY_PATH),
        profile=profile,
        profiles=profiles,
    )


def _profile_settings(
    config: Any, layers: list[tuple[str, dict[str, Any]]], profiles_tree: Any, profile: str
) -> dict[str, tuple[Any, str]]:
    """The settings profile ``profile`` sets, each with its source; ConfigError if unknown."""
    validate_name("profile", profile)
    if profile not in profiles_tree:
        known = ", ".join(sorted(str(name) for name in profiles_tree)) or "none defined"
        raise ConfigError(
            f"unknown runner profile {profile!r}",
            hint=f"known profiles: {known}; define it under dap.runners.{profile}",
        )
    values = {}
    for path, (value, where_in_profile) in _profile_values(profile, profiles_tree[profile]).items():
        file_source = _source_of(config, layers, ("dap", "runners", profile, *where_in_profile))
        where = "" if file_source in ("default", "config") else f" ({file_source})"
        values[path] = (value, f"profile {profile}{where}")
    return values


def runner_names(
    config: Any, spec: str | None = None, *, environ: Mapping[str, str] | None = None
) -> list[str] | None:
    """The runner profiles ``spec`` (else ``DAP_RUNNER``) names, in order: ``a,b,c`` and
    ``@GROUP`` (``dap.groups.GROUP``: a list of profiles), mixed; duplicates dropped, the
    first position kept. None when neither names any (the default runner). Every name is
    checked here, before anything runs: ConfigError (exit 2) for an unknown one."""
    environ = os.environ if environ is None else environ
    spec = spec if spec not in (None, "") else (environ.get(PROFILE_ENV) or None)
    if spec is None:
        return None
    tree = _dap_tree(config)
    groups = tree.get("groups") or {}
    if not isinstance(groups, Mapping):
        raise ConfigError(f"dap.groups must be a mapping, not {groups!r}",
                          hint="give dap.groups NAME: [profile, ...]")
    names: list[str] = []
    for word in (part.strip() for part in str(spec).split(",")):
        if not word:
            raise ConfigError(f"empty runner name in {spec!r}", hint="give --runner a,b or @group")
        members = _group(groups, word[1:]) if word.startswith("@") else [word]
        for name in members:
            validate_name("profile", name)
            if name not in tree["runners"]:
                known = ", ".join(sorted(map(str, tree["runners"]))) or "none defined"
                raise ConfigError(f"unknown runner profile {name!r}",
                                  hint=f"known profiles: {known}; define it under dap.runners.{name}")
            if name not in names:
                names.append(name)
    return names


def _group(groups: Mapping[str, Any], name: str) -> list[str]:
    """The profiles of group ``name``; ConfigError if it is unknown or not a list of names."""
    if name not in groups:
        known = ", ".join(sorted(map(str, groups))) or "none defined"
        raise ConfigError(f"unknown runner group {name!r}",
                          hint=f"known groups: {known}; define it as dap.groups.{name}: [profile, ...]")
    members = groups[name]
    if not isinstance(members, (list, tuple)) or not all(isinstance(m, str) for m in members):
        raise ConfigError(f"dap.groups.{name} must be a list of profile names, not {members!r}")
    return list(members)


def _profile_values(name: str, profile: Any) -> dict[str, tuple[Any, tuple[str, ...]]]:
    """A profile flattened: dotted key path -> (value, path of the value inside the profile)."""
    where = f"dap.runners.{name}"
    if profile is None:
        return {}
    if not isinstance(profile, Mapping):
        raise ConfigError(
            f"{where} must be a mapping, not {profile!r}",
            hint=f"give {where} keys such as ssh_host and vm",
        )
    runner_keys = {key.name for key in KEYS if key.section == "runner"}
    _refuse_unknown(profile, runner_keys | {"ssh", "kubectl"}, where)
    values: dict[str, tuple[Any, tuple[str, ...]]] = {}
    for key, value in profile.items():
        if key in ("ssh", "kubectl"):
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}.{key} must be a mapping, not {value!r}")
            _refuse_unknown(value, {k.name for k in KEYS if k.section == key}, f"{where}.{key}")
            for sub, subvalue in value.items():
                values[f"{key}.{sub}"] = (subvalue, (key, sub))
        else:
            values[f"runner.{key}"] = (value, (key,))
    return values
