"""A server written without tcplab, for the doctor and fd-leak tests.

``python leaky_server.py PORT``: prints ``listening PORT``, echoes, and closes a
connection when its peer closes, unless LEAK=true: then it never closes it
(CLOSE_WAIT, and the fd stays). On EMFILE it logs one line and sleeps 0.1 s,
as a careful server would.
"""

import errno
import os
import selectors
import socket
import sys
import time

port = int(sys.argv[1])
leak = os.environ.get("LEAK") == "true"
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(64)
listener.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(listener, selectors.EVENT_READ)
held = []  # leak mode: every closed-by-peer socket, referenced forever
print("listening", port, flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is listener:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno != errno.EMFILE:
                    raise
                print("accept: Too many open files", file=sys.stderr, flush=True)
                time.sleep(0.1)
                continue
            conn.setblocking(False)
            sel.register(conn, selectors.EVENT_READ)
            continue
        conn = key.fileobj
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        if data:
            try:
                conn.sendall(data)
            except OSError:
                pass
            continue
        sel.unregister(conn)  # the peer closed
        if leak:
            held.append(conn)  # never closed: CLOSE_WAIT, and the fd stays
        else:
            conn.close()
