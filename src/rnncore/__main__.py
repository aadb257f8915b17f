"""``python -m rnncore``: the command line (see :mod:`rnncore.cli`)."""
from rnncore.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
