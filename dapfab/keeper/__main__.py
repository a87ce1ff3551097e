"""``python -m dapfab.keeper CONFIG_JSON``: run a keeper (started by dapfab itself)."""

import sys

from dapfab.keeper.server import main

sys.exit(main(sys.argv[1:]))
