"""The server models' names, importable without importing any model."""

#: The models. ``uvloop`` is the default: it passes the conformance suite and
#: spent the least server CPU per echo in bench/echo_vs_go.py (100 connections,
#: 64 B: uvloop 3.65 us, epoll 3.74 us, asyncio 4.44 us, threads 29.3 us, the Go
#: reference 4.99 us); bench/cpu_per_echo.py puts uvloop and epoll level at
#: 3.42 us. The kernel's own share (stime) is 2.9 to 3.1 us of that.
MODELS = ("uvloop", "asyncio", "epoll", "threads")
DEFAULT_MODEL = "uvloop"
