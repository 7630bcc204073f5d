"""Scenarios: each experiment returns a Result record and prints nothing."""
