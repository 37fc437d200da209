"""`python -m shoal` is the `shoal` command."""

import sys

from shoal.deploy.cli import main

sys.exit(main())
