"""``python -m npuagent``: the same as the ``npuagent`` command."""

import sys

from .cli import main

sys.exit(main())
