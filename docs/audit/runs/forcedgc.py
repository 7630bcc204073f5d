"""audit3: is an idle Go server's last unreachable net.Conn closed only by the
forced GC (forcegcperiod, 2 min; sysmon sleeps up to 1 min when idle)?
Runs inside `unshare -n` (checks the netns differs from the host's)."""
import os, socket, subprocess, sys, time, threading
HOST_NS = sys.argv[1]
assert os.readlink("/proc/self/ns/net") != HOST_NS, "not in a private netns"
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
binary = sys.argv[2]
env = dict(os.environ, GODEBUG="gctrace=1", GOGC="", GOMEMLIMIT="")
p = subprocess.Popen([binary, "-mode", "drop", "-addr", "127.0.0.1:8080"], env=env,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
t0 = time.monotonic()
print(p.stdout.readline().strip(), flush=True)
def err():
    for line in p.stderr:
        print(f"{time.monotonic()-t0:7.1f} s  {line.strip()}", flush=True)
threading.Thread(target=err, daemon=True).start()
def fds():
    return len(os.listdir(f"/proc/{p.pid}/fd"))
print(f"{time.monotonic()-t0:7.1f} s  fds {fds()} before", flush=True)
for i in range(512):
    c = socket.create_connection(("127.0.0.1", 8080))
    c.sendall(b"x" * 64); c.recv(64); c.close()
print(f"{time.monotonic()-t0:7.1f} s  flood done, fds {fds()}", flush=True)
end = time.monotonic() + 240
last = None
while time.monotonic() < end:
    n = fds()
    if n != last:
        print(f"{time.monotonic()-t0:7.1f} s  fds {n}", flush=True)
        last = n
    time.sleep(0.5)
p.terminate(); p.wait()
