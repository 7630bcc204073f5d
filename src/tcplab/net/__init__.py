"""Lab networks: client and server namespaces joined by veth pairs, shaped.

plan.py (pure: addresses, which mechanism does each knob), build.py (rtnetlink
through pyroute2, nft), delayline.py (delay and jitter without netem),
registry.py (the nets that exist, one file each), control.py (`tcplab net`).
Below experiments/ and cli/, beside observe/: it imports observe.nsutil only.
"""
