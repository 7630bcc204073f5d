"""audit3: what 'ss -s' prints for FIN_WAIT2 minisockets (private netns, checked)."""
import os, socket, subprocess, sys, time
assert os.readlink("/proc/self/ns/net") != sys.argv[1], "not in a private netns"
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
ls = socket.socket(); ls.bind(("127.0.0.1", 8080)); ls.listen()
cs = [socket.create_connection(("127.0.0.1", 8080)) for _ in range(5)]
held = [ls.accept()[0] for _ in range(5)]
for c in cs: c.close()
time.sleep(0.3)
print(subprocess.run(["ss", "-s"], capture_output=True, text=True).stdout.splitlines()[1])
print([l for l in open("/proc/net/sockstat") if l.startswith("TCP")][0].strip())
print(subprocess.run(["ss", "-tan", "state", "fin-wait-2"], capture_output=True, text=True).stdout.count("127.0.0.1:8080"))
