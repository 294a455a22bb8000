"""``python -m polytask``: the command line, as torchrun starts it (``torchrun ... -m polytask
train spec.yaml``)."""

from polytask.cli import app

app(prog_name="polytask")
