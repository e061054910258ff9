"""`python -m taxi_tornado` is the `taxi-tornado` command."""

import sys

from taxi_tornado.cli import main

sys.exit(main())
