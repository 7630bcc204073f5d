"""audit3: does a pool with an idle cap churn in a steady stream (no rounds)?
tcplab's engine (traffic/engine.py) as `tcplab bomb --mode pool --max-idle M`
configures it, with rounds=False. Runs inside `unshare -n` (netns checked)."""
import dataclasses, os, subprocess, sys, time, socket
HOST_NS = sys.argv[1]
assert os.readlink("/proc/self/ns/net") != HOST_NS, "not in a private netns"
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
from tcplab.traffic import bomb, engine
from tcplab.traffic.target import Target
srv = subprocess.Popen([sys.executable, "-m", "tcplab", "server", "--port", "8080"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", 8080), timeout=1).close(); break
        except OSError:
            time.sleep(0.1)
    target = Target("127.0.0.1", 8080, socket.AF_INET, ("127.0.0.1", 8080))
    for rounds, cap in [(True, 2), (False, 2), (False, 8), (False, 0)]:
        for rep in range(3):
            cfg = bomb.config("pool", count=3000, duration=30, pool_size=8, max_idle=cap)
            cfg = dataclasses.replace(cfg, rounds=rounds)
            d = engine.Driver(target, cfg)
            d.run()
            d.stop(); d.close()
            print(f"rounds={rounds} idle_cap={cap}: attempted {d.attempted}, ok {d.ok}, "
                  f"failed {d.failed}, opened {d.opened}", flush=True)
            time.sleep(0.2)
finally:
    srv.terminate(); srv.wait()
