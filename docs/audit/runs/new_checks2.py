import os, socket, subprocess, sys, time
host_ns = sys.argv[1]
assert os.readlink("/proc/self/ns/net") != host_ns
def sh(c): return subprocess.run(c, shell=True, capture_output=True, text=True)
sh("ip link set lo up")
def wr(n, v):
    assert os.readlink("/proc/self/ns/net") != host_ns
    open("/proc/sys/"+n.replace(".","/"),"w").write(str(v))
def ext():
    lines=open("/proc/net/netstat").read().splitlines()
    k=lines[0].split()[1:]; v=list(map(int,lines[1].split()[1:])); return dict(zip(k,v))
# syncookies = 2: every SYN gets a cookie even with an empty queue
wr("net.ipv4.tcp_syncookies", 2)
ls=socket.socket(); ls.bind(("127.0.0.1",8080)); ls.listen(8)
b=ext(); cs=[socket.create_connection(("127.0.0.1",8080)) for _ in range(3)]; time.sleep(0.1); a=ext()
print("syncookies=2, 3 connects on an empty listener:", {k:a[k]-b[k] for k in ("SyncookiesSent","SyncookiesRecv","TCPReqQFullDoCookies","SyncookiesFailed")})
print(sh("ss -tn state syn-recv").stdout.count("\n"), "lines of ss state syn-recv (header incl.)")
for c in cs: c.close()
ls.close()
wr("net.ipv4.tcp_syncookies", 1)
# reserved ports, keeping the sockets
wr("net.ipv4.ip_local_port_range", "40000 40009")
wr("net.ipv4.ip_local_reserved_ports", "40000-40007")
keep=[]; got=[]
for _ in range(4):
    s=socket.socket()
    try: s.bind(("127.0.0.1",0)); got.append(s.getsockname()[1]); keep.append(s)
    except OSError as e: got.append(e.strerror); break
print("bind(0) with 40000-40007 reserved:", got)
s=socket.socket(); s.bind(("127.0.0.1",40001)); print("bind by number to reserved 40001 ok:", s.getsockname()[1]); keep.append(s)
for s in keep: s.close()
wr("net.ipv4.ip_local_reserved_ports", "")
