"""Server CPU time per echo for every tcplab model and the Go reference echo server
(bench/peers/echo.go), every server in a fresh private network namespace with a ping-pong
load generator in its own process. Root or unprivileged user namespaces; about 2 minutes.
It is part 1 of bench/echo_vs_go.py, which holds the code; what is measured and how:
bench/README.md, "cpu_per_echo.py".
"""

import sys

import echo_vs_go  # bench/echo_vs_go.py, next to this file

if __name__ == "__main__":
    sys.exit(echo_vs_go.main(alone=True))
