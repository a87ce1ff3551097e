"""Idle helpers (docs/design.md §9, §10): helper channels between commands, kept per VM on
the connections of a :class:`~dapfab.connection.Pool`, each holding one of its sessions.

A helper command takes an idle helper of its VM when there is one; else a free session;
else an idle helper of another VM gives up its session; else it waits a bounded time for
room (see :func:`worth_waiting_until`) before the pool opens another connection: a burst
of short calls then reuses helpers instead of paying a connection and an ``incus exec``
each.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dapfab import compat
from dapfab.connection import POOL, Link, Pool

if TYPE_CHECKING:
    from dapfab.config import RunnerConfig

SESSION_WAIT_MIN = 2.0  # seconds a helper call may wait for a busy connection's session

Instance = tuple[str, "str | None", str]  # (incus client, project, VM): where a helper runs


def instance_of(config: RunnerConfig) -> Instance:
    """The VM a config's commands run in, as idle helpers are kept."""
    return (config.incus, config.project, config.vm_name)


def usable(channel: Any) -> bool:
    """Whether an idle helper's channel can still take a command."""
    return not compat.channel_spent(channel)


@dataclass
class Lease:
    """A helper channel lent to one command; set ``keep`` to return it to the idle ones."""

    link: Link
    channel: Any
    fresh: bool  # a new channel: the helper still has to be started on it
    helpers: HelperPool
    keep: bool = False

    def started(self, seconds: float) -> None:
        """A new helper on this channel took ``seconds`` to start (weighed against waiting
        for a session, see :func:`worth_waiting_until`)."""
        self.helpers.start_seconds[self.link] = seconds


def worth_waiting_until(
    links: list[Link], since: float, config: RunnerConfig, start_seconds: Any = None
) -> float:
    """Until when a helper call waits for a session on links that are all busy.

    Twice what the alternative costs (opening a connection and starting a helper on it, as
    measured on these links), at least :data:`SESSION_WAIT_MIN`, counted from when the wait
    began or the link opened: a burst of short calls then queues for helpers that are about
    to be free, and a call stuck behind long-running ones is delayed by a bounded amount.
    While links are still opening: their connect timeout.
    """
    starts = start_seconds if start_seconds is not None else {}
    ends = [
        max(since, link.opened_at)
        + max(SESSION_WAIT_MIN, 2 * (link.open_seconds + starts.get(link, link.open_seconds)))
        for link in links
        if link.open_seconds is not None
    ]
    return min(ends) if ends else since + float(config.connect_timeout)


class HelperPool:
    """Idle helper channels per (connection, VM) on the connections of ``connections``."""

    def __init__(self, connections: Pool) -> None:
        self.connections = connections
        self._idle: dict[tuple[Link, Instance], list[Any]] = {}  # guarded by connections.changed
        # How long the last new helper took to start, per connection.
        self.start_seconds: weakref.WeakKeyDictionary[Link, float] = weakref.WeakKeyDictionary()
        connections.add_holder(self._give_up_one)

    @contextmanager
    def lease(self, config: RunnerConfig, *, idle: bool = True) -> Iterator[Lease]:
        """A channel for a helper command: an idle one of its VM if there is one (and
        ``idle``), else a new one; kept for the next command if the lease says ``keep``."""
        instance = instance_of(config)

        def idle_one(links: list[Link], retired: list[Any]) -> tuple[Link, Any] | None:
            self._forget_gone()
            for link in links:
                spare = self._idle.get((link, instance), [])
                while spare:
                    channel = spare.pop()
                    if usable(channel):
                        return link, channel
                    retired.append(channel)
                    link.release()
            return None

        def until(links: list[Link], since: float) -> float:
            return worth_waiting_until(links, since, config, self.start_seconds)

        link, channel = self.connections.take(
            config, prefer=idle_one if idle else None, wait_until=until if idle else None
        )
        lease = None
        try:
            lease = Lease(link, channel, fresh=channel is None, helpers=self)
            if lease.fresh:
                lease.channel = self.connections.open_channel(link)
            yield lease
        finally:
            self._give_back(link, lease.channel if lease else channel,
                            instance if lease and lease.keep else None)

    def _give_back(self, link: Link, channel: Any, keep: Instance | None) -> None:
        """Keep ``channel`` as an idle helper of ``keep`` if it can be, else give its session
        back and close it."""
        with self.connections.changed:
            if keep and channel is not None and link.alive and usable(channel) \
                    and self.connections.holds(link):
                self._idle.setdefault((link, keep), []).append(channel)
                self.connections.changed.notify_all()
                return
        self.connections.give_back(link, channel)

    def _give_up_one(self, link: Link) -> Any:
        """The pool needs a session of ``link``: an idle helper of any VM hands it over."""
        for (owner, _), channels in self._idle.items():
            if owner is link and channels:
                return channels.pop(0)
        return None

    def _forget_gone(self) -> None:
        """Drop the entries of connections the pool no longer holds (they died)."""
        for key in [key for key in self._idle if not self.connections.holds(key[0])]:
            del self._idle[key]

    def idle_count(self) -> int:
        """How many idle helpers there are."""
        with self.connections.changed:
            return sum(len(channels) for channels in self._idle.values())

    def send_idle(self, frame: bytes) -> None:
        """Send ``frame`` (a heartbeat) to every idle helper that can take it at once."""
        with self.connections.changed:
            for channel in [c for channels in self._idle.values() for c in channels]:
                try:
                    if channel.send_ready():
                        channel.sendall(frame)
                except Exception:  # a closing channel: the next lease drops it
                    pass

    def drop_idle(self) -> None:
        """Close every idle helper, so that the next call starts a fresh one: for a caller
        about to end dapfab's processes in the VMs (the test lab's reset does)."""
        with self.connections.changed:
            spare = []
            for (link, _), channels in self._idle.items():
                for channel in channels:
                    link.release()
                    spare.append(channel)
            self._idle.clear()
            self.connections.changed.notify_all()
        for channel in spare:
            channel.close()


HELPERS = HelperPool(POOL)
