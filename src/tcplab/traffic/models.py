"""The server models' names, importable without importing any model."""

#: The models. ``uvloop`` is the default: it passes the conformance suite and
#: spends the least server CPU per echo (epoll within noise of it; asyncio and
#: the Go reference server more), most of it the kernel's own read and write:
#: see bench/results.md, "CPU per echo".
MODELS = ("uvloop", "asyncio", "epoll", "threads")
DEFAULT_MODEL = "uvloop"
