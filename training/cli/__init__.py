"""`vital` subcommands of the training package (phantom, check-data, distill, train, eval): argument parsing
and one-line errors on top of the library modules. Each module's `register` is a `vital.commands` entry point."""
