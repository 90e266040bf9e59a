"""fastproxy: a reverse proxy with a compiled core on uvloop."""

__version__ = "0.1.0"
