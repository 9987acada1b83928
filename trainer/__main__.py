"""`python -m gradwatch ...` is the `gradwatch` console script (server/cli.py): `python -m gradwatch serve`,
`python -m gradwatch train --depth 8 --steps 300`, `python -m gradwatch runs`."""

import sys

from gradwatch.server.cli import main

if __name__ == "__main__":
    sys.exit(main())
