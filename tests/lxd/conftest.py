"""The LXD tier: the agreement tests bring labs of both backends up and down themselves, so
they run in a pytest invocation of their own, only when ``DAPFAB_LAB_BACKEND=lxd``::

    DAPFAB_LAB_BACKEND=lxd python3 -m pytest -q tests/lxd
"""

import os

collect_ignore = [] if os.environ.get("DAPFAB_LAB_BACKEND") == "lxd" else ["test_lxd_agreement.py"]
