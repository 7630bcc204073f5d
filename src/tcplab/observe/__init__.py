"""Reads the live kernel: sockets, processes, limits."""
