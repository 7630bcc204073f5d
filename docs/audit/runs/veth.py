import os, socket, subprocess, sys, time
host_ns = sys.argv[1]
assert os.readlink("/proc/self/ns/net") != host_ns
def sh(c):
    r=subprocess.run(c, shell=True, capture_output=True, text=True); return (r.stdout+r.stderr).strip()
print(sh("ip link add tl0 address 02:00:c6:12:0d:01 type veth peer name tl1 address 02:00:c6:12:0d:02"))
sh("ip addr add 198.18.13.1/24 dev tl0; ip link set tl0 up; ip link set tl1 up")
sh("ip neigh replace 198.18.13.2 lladdr 02:00:c6:12:0d:02 dev tl0 nud permanent")
u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.setsockopt(socket.IPPROTO_IP, 11, 1)
def stats(): return sh("ip -s link show tl0 | sed -n '/TX:/{n;p}'")
u.sendto(b"x", ("198.18.13.2", 9)); print("up:", sh("ip link show tl0").splitlines()[0], "tx", stats())
sh("ip link set tl1 down"); time.sleep(0.2)
print(sh("ip link show tl0").splitlines()[0])
for i in range(3):
    try: u.sendto(b"x", ("198.18.13.2", 9)); print("send ok")
    except OSError as e: print("send error", e)
print("tx after down:", stats())
print(sh("tc -s qdisc show dev tl0"))
