"""``python -m rooflens.cli``: the same app as the ``rooflens`` console script."""

import os

from rooflens.cli import app

if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()
