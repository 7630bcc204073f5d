"""Audit runs, inside a private network namespace (run with: unshare -n python3 checks.py)."""
import errno, os, socket, subprocess, sys, time

def sh(cmd): return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
def private_namespace():
    """A fresh `unshare -n` namespace has only lo: refuse to write sysctls anywhere else."""
    return sorted(os.listdir("/sys/class/net")) == ["lo"]
def w(name, val):
    assert private_namespace(), "not in a private network namespace: run with unshare -n"
    with open("/proc/sys/" + name.replace(".", "/"), "w") as f: f.write(str(val))
def r(name):
    with open("/proc/sys/" + name.replace(".", "/")) as f: return f.read().strip()
def netstat(key):
    lines = open("/proc/net/netstat").read().splitlines()
    for h, v in zip(lines[::2], lines[1::2]):
        hs, vs = h.split(), v.split()
        if key in hs: return int(vs[hs.index(key)])
def snmp(key):
    lines = open("/proc/net/snmp").read().splitlines()
    for h, v in zip(lines[::2], lines[1::2]):
        hs, vs = h.split(), v.split()
        if hs[0] == "Tcp:" and key in hs: return int(vs[hs.index(key)])
def states():
    out = sh("ss -Htan")
    c = {}
    for line in out.splitlines():
        s = line.split()[0]; c[s] = c.get(s, 0) + 1
    return c

subprocess.run("ip link set lo up", shell=True, check=True)

def listener(addr="127.0.0.1", port=0):
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((addr, port)); l.listen(1024); return l

def close_first(l, n, dst=None, src=None):
    """n connections, client closes first, server closes after -> client TIME_WAIT."""
    dst = dst or l.getsockname(); made = 0; errs = []
    for _ in range(n):
        c = socket.socket()
        if src: c.bind((src, 0))
        try:
            c.connect(dst)
        except OSError as e:
            errs.append(e.errno); c.close(); continue
        s, _ = l.accept(); c.close(); time.sleep(0.002); s.close(); made += 1
    time.sleep(0.2)
    return made, errs

what = sys.argv[1]
if what == "twbuckets":
    w("net.ipv4.tcp_max_tw_buckets", 10)
    l = listener(); before = netstat("TCPTimeWaitOverflow")
    dm0 = sh("dmesg | grep -ci 'time wait bucket'")
    made, errs = close_first(l, 30)
    print("twbuckets: made", made, "TIME_WAIT", states().get("TIME-WAIT", 0),
          "TCPTimeWaitOverflow delta", netstat("TCPTimeWaitOverflow") - before,
          "dmesg 'time wait bucket' lines before/after", dm0, sh("dmesg | grep -ci 'time wait bucket'"))
elif what == "reuse":
    # tw_reuse=2 with a 10-port range: fill with TIME_WAIT, wait 1.5 s, try again.
    ts, dst_addr, src = sys.argv[2], sys.argv[3], (sys.argv[4] if len(sys.argv) > 4 else None)
    w("net.ipv4.tcp_tw_reuse", sys.argv[5] if len(sys.argv) > 5 else 2)
    w("net.ipv4.tcp_timestamps", ts); w("net.ipv4.ip_local_port_range", "40000 40009")
    if dst_addr.startswith("10."):
        sh(f"ip addr add {dst_addr}/8 dev lo")
    l = listener(dst_addr)
    made, errs = close_first(l, 10, src=src)
    tw = states().get("TIME-WAIT", 0)
    time.sleep(1.6)
    made2, errs2 = close_first(l, 5, src=src)
    print(f"reuse tw_reuse={r('net.ipv4.tcp_tw_reuse')} timestamps={ts} dst={dst_addr}: first 10 made {made}, TIME_WAIT {tw}; "
          f"after 1.6 s: made {made2}, errors {[errno.errorcode[e] for e in errs2]}")
elif what == "bindreuse":
    # tcp_tw_reuse=0: a TIME_WAIT 4-tuple, then bind() its port with SO_REUSEADDR and connect() to the same peer
    w("net.ipv4.tcp_tw_reuse", 0); w("net.ipv4.tcp_timestamps", sys.argv[2])
    l = listener()
    c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.connect(l.getsockname()); port = c.getsockname()[1]; s, _ = l.accept()
    c.close(); time.sleep(0.05); s.close(); time.sleep(0.2)
    print("bindreuse: TIME_WAIT", states().get("TIME-WAIT", 0), "port", port)
    d = socket.socket(); d.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        d.bind(("127.0.0.1", port)); d.connect(l.getsockname()); print(f"  timestamps={sys.argv[2]}: bind+connect over the TIME_WAIT 4-tuple succeeded; TIME_WAIT now", states().get("TIME-WAIT", 0))
    except OSError as e:
        print(f"  timestamps={sys.argv[2]}: failed", errno.errorcode[e.errno])
elif what == "currestab":
    l = listener(); cs = []
    for _ in range(5):
        c = socket.socket(); c.connect(l.getsockname()); s, _ = l.accept(); cs.append((c, s))
    e0 = snmp("CurrEstab")
    for c, s in cs: c.close()
    time.sleep(0.3)
    print("currestab: states", states(), "CurrEstab", snmp("CurrEstab"), "(before the clients closed:", e0, ")", "ss -s:", sh("ss -s | grep -i estab"))
elif what == "keepalive":
    # server keep-alive 1 s idle/interval, 3 probes, on accepted sockets; clients close (orphan FIN_WAIT2, tcp_fin_timeout as given)
    w("net.ipv4.tcp_fin_timeout", sys.argv[2])
    l = listener(); keep = []
    for _ in range(3):
        c = socket.socket(); c.connect(l.getsockname()); s, _ = l.accept()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        keep.append(s); c.close()
    t0 = time.monotonic(); seen = []
    while time.monotonic() - t0 < int(sys.argv[2]) + 12:
        st = states(); seen.append((round(time.monotonic() - t0, 1), st.get("CLOSE-WAIT", 0), st.get("FIN-WAIT-2", 0)))
        if not st.get("CLOSE-WAIT"): break
        time.sleep(0.5)
    print(f"keepalive tcp_fin_timeout={sys.argv[2]}: (t, CLOSE_WAIT, FIN_WAIT2)", seen[0], seen[len(seen)//2], seen[-1])
elif what == "timewait":
    l = listener(); close_first(l, 1); t0 = time.monotonic()
    while states().get("TIME-WAIT", 0): time.sleep(0.05)
    print("timewait lasted", round(time.monotonic() - t0 + 0.2, 2), "s")
