"""An echo server written without tcplab, for the --server-cmd tests.

``python echo_server_stdlib.py PORT [HOST]``: a stdlib ``socketserver`` echo
server, one thread per connection, on HOST (default 127.0.0.1: loopback's one
address only; pass 0.0.0.0 for every address). It ignores LEAK: it always
closes a connection when its peer closes.
"""

import socketserver
import sys


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:  # a reset peer: nothing to echo, the socket closes below
            pass


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128


host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
Server((host, int(sys.argv[1])), Echo).serve_forever()
