"""``python3 -m dapfab.testing.cluster --state-dir DIR --address ADDR [--port 6443]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .server import serve


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until SIGTERM."""
    p = argparse.ArgumentParser(prog="python3 -m dapfab.testing.cluster",
                                description="The dapfab lab's Kubernetes API server and demo pods.")
    p.add_argument("--state-dir", required=True, type=Path,
                   help="where kubeconfig, ready, requests.log, pods/*.log and control.sock go")
    p.add_argument("--address", required=True, help="address to serve HTTPS on (in the certificate)")
    p.add_argument("--port", type=int, default=6443, help="API port (default 6443)")
    p.add_argument("--pod-address", default=None,
                   help="address the demo pods listen on and report as pod IP (default: --address)")
    args = p.parse_args(argv)
    serve(args.state_dir, args.address, args.port, args.pod_address)


if __name__ == "__main__":
    main()
