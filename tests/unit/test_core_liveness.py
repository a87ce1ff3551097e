"""A link whose peer went silent is asked once before a new call uses it, and closed from
its outermost silent hop when no reply comes (docs/design.md §10), without SSH or root."""

from __future__ import annotations

import threading
import time

import pytest
from fakeremote import FakeHost, FakeLink

from dapfab import connection
from dapfab.config import RunnerConfig
from dapfab.connection import PROBE_WAIT, STALE_AFTER, Keepalive, Link, Pool


@pytest.fixture
def config(tmp_path):
    return RunnerConfig(ssh_host="ops@mgmt.example", vm_name="runner",
                        known_hosts=str(tmp_path / "known_hosts"), persist=0)


class SilentOrNot:
    """A transport that answers ``keepalive@openssh.com`` at once, or never (until closed)."""

    def __init__(self, answers: bool = True) -> None:
        self.answers = answers
        self.active = True
        self.asked = 0
        self.closed = threading.Event()

    def global_request(self, kind: str, wait: bool = True) -> None:
        assert kind == "keepalive@openssh.com" and wait
        self.asked += 1
        if not self.answers:
            self.closed.wait()

    def is_active(self) -> bool:
        return self.active

    def close(self) -> None:
        self.active = False
        self.closed.set()


def link_over(*answers: bool, silent_for: float = STALE_AFTER + 5) -> tuple[Link, list[SilentOrNot]]:
    """A link of one hop per answer (gateway first), last heard ``silent_for`` seconds ago."""
    link = Link(RunnerConfig(ssh_host="ops@mgmt.example"), None)
    transports = [SilentOrNot(answer) for answer in answers]
    labels = ["gateway bastion", "management host mgmt"][-len(answers):]
    for transport, label in zip(transports, labels, strict=True):
        keepalive = Keepalive(transport, label, link._mark_dead)
        keepalive.heard -= silent_for
        link._keepalives.append(keepalive)
        link._connections.append(type("Hop", (), {"transport": transport})())
    return link, transports


def test_a_link_heard_lately_is_used_without_a_question():
    link, transports = link_over(True, True, silent_for=1.0)
    link.check_fresh()
    assert [t.asked for t in transports] == [0, 0]


def test_a_silent_link_that_answers_is_kept_and_counts_as_heard():
    link, transports = link_over(True, True)
    link.check_fresh()
    assert [t.asked for t in transports] == [1, 1]
    assert link.alive and link.dead_reason is None
    link.check_fresh()  # heard just now: no second question
    assert [t.asked for t in transports] == [1, 1]


def test_a_slow_reply_in_flight_is_doubted_even_when_heard_lately():
    link, transports = link_over(True, silent_for=1.0)
    link._keepalives[0].pending_since = time.monotonic() - connection.SLOW_REPLY - 1
    link.check_fresh()
    assert transports[0].asked == 1 and link.alive


@pytest.mark.parametrize(("answers", "blamed"), [
    ((True, False), "management host mgmt"),
    ((False, False), "gateway bastion"),
    ((False,), "management host mgmt"),
])
def test_a_silent_link_is_closed_from_its_outermost_silent_hop_within_the_probe_wait(answers, blamed):
    link, transports = link_over(*answers)
    started = time.monotonic()
    link.check_fresh()
    assert time.monotonic() - started < PROBE_WAIT + 1
    assert not link.alive
    first = answers.index(False)
    assert [t.active for t in transports] == [True] * first + [False] * (len(answers) - first)
    assert link.dead_hop == blamed
    assert "slept or the network changed" in link.dead_reason
    assert link.lost_error().hop == f"ssh {blamed}"


def test_callers_at_once_ask_one_question():
    link, transports = link_over(True, False)
    callers = [threading.Thread(target=link.check_fresh) for _ in range(5)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(PROBE_WAIT + 2)
    assert [t.asked for t in transports] == [1, 1] and not link.alive


def test_the_pool_replaces_a_link_that_fails_the_question(config):
    host = FakeHost()
    pool = Pool(link_factory=lambda config, identity: FakeLink(config, identity, host))
    first, _ = pool.take(config)
    pool.open_channel(first).close()
    pool.give_back(first, None)
    silent = SilentOrNot(answers=False)
    first.transport = silent  # the fake link is alive while its transport is
    keepalive = Keepalive(silent, "management host mgmt", first._mark_dead)
    keepalive.heard -= STALE_AFTER + 5
    first._keepalives.append(keepalive)
    second, _ = pool.take(config)
    assert second is not first and not first.alive
    assert pool.opened == 2
