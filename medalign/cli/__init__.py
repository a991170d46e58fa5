"""The ``medalign`` command line."""
