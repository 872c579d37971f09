"""The handlers of the ``volgan`` subcommands: each takes the parsed arguments, does its job through
the library and prints what it wrote. The parsers are in :mod:`volgan.cli`; library code is elsewhere.

Heavy imports (torch, MONAI) happen inside the handlers, so ``volgan --help`` stays instant.
"""

EXIT_INTERRUPTED = 130
"""Exit status of a command stopped by Ctrl-C or SIGTERM (after it wrote what it could)."""
