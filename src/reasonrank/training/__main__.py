"""`python -m reasonrank.training …` (and `accelerate launch … -m reasonrank.training …`): the train commands."""

from reasonrank.training.commands import app


def main() -> None:
    from reasonrank.cli import run  # errors are reported as by `reasonrank train`

    run(app)


if __name__ == "__main__":
    main()
