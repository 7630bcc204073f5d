"""The command line: argument parsing, exit codes, stdout, --json."""
