"""The keeper: a small daemon per connection identity that holds the SSH connection and
its helpers across processes, so every call after the first is warm (docs/design.md §12).

:mod:`~dapfab.keeper.client` is what a call uses (stdlib only: no paramiko, no Fabric);
:mod:`~dapfab.keeper.server` is the daemon (``python -m dapfab.keeper``);
:mod:`~dapfab.keeper.wire` the messages between them; :mod:`~dapfab.keeper.place` where
its socket lives and the checks on it.
"""
