"""The ``perfgate`` command, the CI client of a perfgate server: :mod:`perfgate_cli.cli`."""
