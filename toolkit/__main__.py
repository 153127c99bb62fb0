"""``python -m toolkit`` is ``tritonctl``."""

from toolkit.cli.main import app

app()
