"""Turns Results into terminal output."""
