"""``python -m selectbench``."""

import sys

from selectbench.cli import main

sys.exit(main())
