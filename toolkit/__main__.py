"""``python -m toolkit`` is ``tritonctl`` (named so in help, usage lines and shell completion)."""

from toolkit.cli.main import app

app(prog_name="tritonctl")
