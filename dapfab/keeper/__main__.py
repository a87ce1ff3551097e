"""``python -m dapfab.keeper DIGEST`` (config on stdin): run a keeper (started by dapfab itself)."""

import sys

from dapfab.keeper.server import main

sys.exit(main(sys.argv[1:]))
