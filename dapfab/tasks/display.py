"""What ``k8s.forward`` and ``k8s.proxy`` show while they run, and their wait until Ctrl-C
or SIGTERM.

``Forwarding from ...`` lines go to stdout (parseable); events go to stderr; on a terminal
one live status line on stderr shows the forward's state and the bridge's traffic. Every
line is escaped with :func:`dapfab.errors.shown` (kubectl's messages are remote text).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Protocol

from dapfab.errors import shown

if TYPE_CHECKING:
    from dapfab.bridge import LaptopBridge


class Served(Protocol):
    """What runs until the signal and shows its state: a :class:`~dapfab.forward.Forward`
    or an :class:`~dapfab.apiproxy.ApiProxy`."""

    restarts: int

    @property
    def alive(self) -> bool: ...

    def close(self) -> None: ...


def _mib(count: int) -> str:
    return f"{count / 1048576:.1f} MiB"


class ForwardDisplay:
    """Forwarding lines on stdout; events on stderr; on a terminal, one live status line."""

    def __init__(self, kind: str = "forward") -> None:
        self.kind = kind
        self.live = sys.stderr.isatty()
        self.status = ""
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        """A ``Forwarding from`` line on stdout."""
        with self.lock:
            self._clear()
            print(shown(text), flush=True)
            self._draw()

    def event(self, message: str) -> None:
        """A ``dapfab: <kind>: ...`` line on stderr (restarts, refused connections)."""
        with self.lock:
            self._clear()
            print(f"dapfab: {self.kind}: {shown(message)}", file=sys.stderr, flush=True)
            self._draw()

    def update(self, status: str) -> None:
        """Replace the live status line (on a terminal only)."""
        with self.lock:
            self.status = shown(status)
            self._draw()

    def _clear(self) -> None:
        if self.live and self.status:
            sys.stderr.write("\r\x1b[K")

    def _draw(self) -> None:
        if self.live and self.status:
            sys.stderr.write("\r\x1b[K" + self.status)
            sys.stderr.flush()

    def done(self) -> None:
        """Remove the live status line."""
        with self.lock:
            self._clear()
            self.status = ""
            if self.live:
                sys.stderr.flush()


def status_line(label: str, served: Served, bridge: LaptopBridge | None, kind: str = "forward") -> str:
    """The live status: the forward's (or proxy's) state and restarts, and the bridge's traffic."""
    state = "up" if served.alive else "reconnecting"
    status = f"{kind} {label} {state}, restarts {served.restarts}"
    if bridge is not None:
        status += (
            f" | connections {bridge.open_connections} open, {bridge.total_connections} total"
            f" | up {_mib(bridge.bytes_up)}, down {_mib(bridge.bytes_down)}"
        )
    return status


def wait_for_signal(label: str, served: Served, bridge: LaptopBridge | None, display: ForwardDisplay) -> None:
    """Keep the status line fresh until Ctrl-C or SIGTERM (which the CLI edge raises)."""
    while True:
        time.sleep(0.5)
        if display.live:
            display.update(status_line(label, served, bridge, display.kind))


def close(served: Served, bridge: LaptopBridge | None, display: ForwardDisplay) -> None:
    """Close the bridge and the forward or proxy (gone in the VM when this returns); a
    second Ctrl-C or SIGTERM cannot cut this short."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    display.done()
    if bridge is not None:
        bridge.close()
    served.close()
