"""Everything that runs on the far side of SSH (docs/design.md §9): the shell programs
(:mod:`~dapfab.remote.scripts`), the frames and markers they speak
(:mod:`~dapfab.remote.protocol`), the ``incus exec`` command line and its errors
(:mod:`~dapfab.remote.incus`), and how the launcher and helper are started
(:mod:`~dapfab.remote.launcher`)."""
