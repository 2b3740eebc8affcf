"""The ``fedmedlora`` command line: a table of small commands that call library functions.

Each command resolves its options, calls one library function and prints where the results went. Heavy
modules (torch, transformers, flwr) are imported inside the commands so ``fedmedlora --help`` stays fast.
"""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
data_app = typer.Typer(no_args_is_help=True, help="Build and inspect the federated benchmark.")
app.add_typer(data_app, name="data")


def main() -> None:  # console-script entry point
    app()


# ---- data commands (fedmedlora.corpora / fedmedlora.benchmark) ----------------------------------------------


# ---- single-site / centralized / zero-shot training, extraction, evaluation (fedmedlora.train, .evaluate) ----


# ---- federation (fedmedlora.federation) -----------------------------------------------------------------------


# ---- encoder baseline (fedmedlora.encoder) --------------------------------------------------------------------


if __name__ == "__main__":
    main()
