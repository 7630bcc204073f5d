"""The server models' names, importable without importing any model."""

#: The models. ``uvloop`` is the default, as issue 2 set it, until the
#: multiplexing benchmark (issue 6: 1 to 10,000 connections, 64 B to 64 KiB)
#: says otherwise. bench/cpu_per_echo.py (100 connections, 64 B ping-pong,
#: median of 5 interleaved rounds) measured server CPU per echo: uvloop 3.6 us,
#: epoll 3.4 us (0.94x uvloop), stdlib asyncio 4.2 us, threads 27.8 us; the
#: kernel's own share (stime) was 2.8 to 2.9 us for the three event loops.
MODELS = ("uvloop", "asyncio", "epoll", "threads")
DEFAULT_MODEL = "uvloop"
