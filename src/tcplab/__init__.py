"""tcplab: make the Linux TCP stack visible from Python."""

__version__ = "0.1.0"
