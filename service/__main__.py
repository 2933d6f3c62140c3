"""`python -m service [migrate | seed ...]`."""

import sys

from service.cli import main

sys.exit(main())
