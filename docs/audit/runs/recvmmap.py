import socket
a, b = socket.socketpair()
for _ in range(2000):
    a.send(b"x" * 64)
    b.recv(256 * 1024)
