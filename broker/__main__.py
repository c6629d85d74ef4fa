"""`python -m broker` runs the same command line as `broker`."""

import sys

from broker.cli import main

sys.exit(main())
