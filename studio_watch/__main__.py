"""`python -m studio_watch` is the `studio-watch` command."""

import sys

from .cli import main

sys.exit(main())
