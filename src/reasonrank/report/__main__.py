"""`python -m reasonrank.report …`: the `reasonrank report` command, with the CLI's error handling."""

from reasonrank.cli import run
from reasonrank.report.commands import app

if __name__ == "__main__":
    run(app)
