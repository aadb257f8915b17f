"""rnncore vs the NumPy reference vs PyTorch, side by side: see ``rnncore.bench``."""
from rnncore.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
