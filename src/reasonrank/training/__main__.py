"""`python -m reasonrank.training …` (and `accelerate launch … -m reasonrank.training …`): the train commands."""

import sys

import typer

from reasonrank.errors import ReasonRankError
from reasonrank.training.commands import app


def main() -> None:
    try:
        app(standalone_mode=False)
    except (ReasonRankError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        sys.exit(getattr(exc, "exit_code", getattr(exc, "code", 0)))


if __name__ == "__main__":
    main()
