"""`python -m studio_watch` is the `studio-watch` command."""

import sys

from studio_watch.cli.main import main

sys.exit(main())
