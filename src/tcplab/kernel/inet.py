"""Socket options Python's socket module does not name (include/uapi/linux/in.h)."""

#: bind() takes the address and leaves the port to connect(), which picks one per
#: destination (Linux 4.2): many destinations can share a source address's ports.
IP_BIND_ADDRESS_NO_PORT = 24
#: This socket's own ephemeral range, (high << 16) | low (Linux 6.3).
IP_LOCAL_PORT_RANGE = 51
