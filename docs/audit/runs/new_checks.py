import os, socket, subprocess, sys, time
host_ns = sys.argv[1]
me = os.readlink("/proc/self/ns/net")
assert me != host_ns, "not in a private netns"
print("netns", me, "host", host_ns)
def sh(c): return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
sh("ip link set lo up")
def rd(n): 
    try: return open("/proc/sys/"+n.replace(".","/")).read().strip()
    except OSError as e: return f"absent ({e.strerror})"
def wr(n, v):
    assert os.readlink("/proc/self/ns/net") != host_ns
    open("/proc/sys/"+n.replace(".","/"),"w").write(str(v))
print("tcp_retries2", rd("net.ipv4.tcp_retries2"), "tcp_orphan_retries", rd("net.ipv4.tcp_orphan_retries"),
      "keepalive", rd("net.ipv4.tcp_keepalive_time"), rd("net.ipv4.tcp_keepalive_intvl"), rd("net.ipv4.tcp_keepalive_probes"))
print("tcp_max_orphans in this netns:", rd("net.ipv4.tcp_max_orphans"))
# reserved ports: bind by number
wr("net.ipv4.ip_local_port_range", "40000 40009")
wr("net.ipv4.ip_local_reserved_ports", "40000-40007")
s = socket.socket(); s.bind(("127.0.0.1", 40003)); print("bind by number to reserved 40003:", s.getsockname()); s.close()
got=[]
for _ in range(4):
    s = socket.socket()
    try: s.bind(("127.0.0.1", 0)); got.append(s.getsockname()[1])
    except OSError as e: got.append(e.strerror); break
print("bind port 0 with 40000-40007 reserved:", got)
wr("net.ipv4.ip_local_reserved_ports", "")
