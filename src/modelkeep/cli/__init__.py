"""The ``modelkeep`` command: thin argument parsing over the library."""
