"""`python -m reasonrank.serving [options]`: `reasonrank serve`, its errors reported as every reasonrank entry
point reports them (`reasonrank.cli.run`). Here, not in serving.commands: the CLI imports that module."""

from reasonrank.cli import run
from reasonrank.serving.commands import app

run(app)
