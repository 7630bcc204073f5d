"""``tcplab net``: two hosts in namespaces, a link between them, shaped."""

from __future__ import annotations

import argparse
from typing import Any

from tcplab.cli import common
from tcplab.cli.output import emit_json, note, out

DESCRIPTION = """\
A lab network on this machine: a client and a server, each in a network
namespace of its own, joined by veth pairs (through a router namespace when
the link is delayed or lossy). Everything a program meets on a real link and
not on loopback: a 1500-byte MTU (MSS 1448, not 32,741), a round trip, loss,
a bottleneck; and tcp_tw_reuse = 2 no longer applies (it is for loopback only,
net/ipv4/tcp_ipv4.c, tcp_twsk_unique).

  tcplab net up lab --delay 50           make it (RTT 100 ms: 50 each way)
  tcplab net exec lab server -- tcplab server --host 0.0.0.0 --port 8080 &
  tcplab net exec lab client -- sh -c 'tcplab client --host "$TCPLAB_SERVER" \\
      --port 8080 --count 200 --json'
  tcplab net show                        what exists, addresses, shaping
  tcplab net down lab                    stop everything of it

Addresses come from the benchmarking ranges: client 198.18.0.1 and
2001:2:0:1::1, server 198.19.0.1 and 2001:2:0:2::1 with a router
(198.18.0.2 and 2001:2::2 for the server of a direct link). No namespace has
a default route, so nothing can leave the machine.

As root the namespaces are plain network namespaces; as anyone else they sit
in a user namespace of the user's own (root inside, the user's uid outside),
where veth, tbf, nftables and TUN work too. A net is held by a process
(`tcplab net show` names its pid) and goes away with it: `net down`, or
killing that process, leaves no namespace, qdisc, nftables table or delay
line behind.
"""

SHAPING_HELP = """\
shaping (each applies in both directions):
  --delay MS     one-way delay: netem where the kernel has it, else tcplab's
                 delay line (a TUN device in the router, one process; here its
                 median was within 1.5 % of the asked delay up to 5,000
                 packets/s, bench/results.md "The delay line")
  --jitter MS    each packet's delay drawn uniformly from delay +- MS; a packet
                 never overtakes an earlier one from the same source
  --loss PCT     nftables in the router: numgen random, each way
  --rate MBIT    tbf, its queue at least the bandwidth-delay product
  --mtu N        the veths' MTU (1280 to 65535; default 1500)
`tcplab check` says which mechanism each knob uses on this machine.
"""


def positive_float(what: str, low: float = 0.0) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < low or value != value:
            raise argparse.ArgumentTypeError(f"{value:g} is not {what} (at least {low:g})")
        return value

    return parse


def add_shaping_options(p: argparse.ArgumentParser) -> None:
    """--delay --jitter --loss --rate --mtu: also for experiments' --link veth."""
    g = p.add_argument_group("shaping (both directions)")
    g.add_argument("--delay", type=positive_float("milliseconds"), default=0.0, metavar="MS",
                   help="one-way delay in ms (RTT is twice it)")
    g.add_argument("--jitter", type=positive_float("milliseconds"), default=0.0, metavar="MS",
                   help="each packet's delay is drawn from delay +- MS (order kept)")
    g.add_argument("--loss", type=positive_float("a percentage"), default=0.0, metavar="PCT",
                   help="drop PCT %% of packets, each way (nftables numgen)")
    g.add_argument("--rate", type=positive_float("Mbit/s", 0.01), default=None, metavar="MBIT",
                   help="bottleneck rate in Mbit/s (tbf, queue >= bandwidth-delay product)")
    g.add_argument("--mtu", type=common.int_range(1280, 65535, "an MTU"), default=None,
                   metavar="N", help="link MTU (default 1500)")


def shaping_of(args: argparse.Namespace) -> Any:
    from tcplab.net.plan import Shaping

    return Shaping(args.delay, args.jitter, args.loss, args.rate, args.mtu)


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, parents=[common.parent()],
                       help="a client and a server in namespaces, a shaped link between them",
                       description=DESCRIPTION, epilog=SHAPING_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    u = verbs.add_parser("up", parents=[common.parent()], help="make a net",
                         description="Make net NAME: namespaces, links, addresses, shaping. "
                         "It stays until `tcplab net down NAME`.",
                         epilog="how each knob is made:\n" + SHAPING_HELP.split("\n", 1)[1],
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    u.add_argument("name", metavar="NAME", help="lowercase letters, digits, - and _")
    u.add_argument("--router", action="store_true",
                   help="put a router namespace between them even unshaped")
    add_shaping_options(u)
    common.add_json(u, "the net")
    u.set_defaults(func=run_up)

    e = verbs.add_parser(
        "exec", parents=[common.parent()], help="run a command inside a net's client or server",
        description="Run CMD in the client's or the server's namespace of net NAME. "
        "CMD finds the addresses in its environment: TCPLAB_SERVER and TCPLAB_CLIENT "
        "(IPv4), TCPLAB_SERVER6 and TCPLAB_CLIENT6, TCPLAB_NET (the name). The command "
        "replaces tcplab (exec): its exit status, Ctrl-C and output are its own. "
        "tcplab client, bomb and multiplex accept the net's addresses as local targets.",
        epilog="example: tcplab net exec lab client -- sh -c 'ping -c 3 \"$TCPLAB_SERVER\"'")
    e.add_argument("name", metavar="NAME")
    e.add_argument("side", choices=["client", "server"], help="which namespace")
    e.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...",
                   help="the command and its arguments")
    e.set_defaults(func=run_exec)

    s = verbs.add_parser("show", parents=[common.parent()], help="list the nets",
                         description="The nets of this user (root's with sudo): holder pid, "
                         "addresses, shaping and the mechanism of each knob.")
    common.add_json(s, "the nets")
    s.set_defaults(func=run_show)

    d = verbs.add_parser("down", parents=[common.parent()], help="remove a net",
                         description="Stop every process inside net NAME (SIGTERM, then "
                         "SIGKILL after 3 s), then its holder; the namespaces and all in "
                         "them (veths, qdiscs, nftables tables, the delay line) go with it.")
    d.add_argument("name", metavar="NAME")
    common.add_json(d, "what was stopped")
    d.set_defaults(func=run_down)


def _lines(net: Any) -> list[str]:
    kind = "user+net namespaces (unprivileged)" if net.user else "net namespaces (root)"
    lines = [f"net {net.name}: holder pid {net.pid}, {kind}",
             f"  client  {net.client.ipv4:<15} {net.client.ipv6:<16} pid {net.client.pid}",
             f"  server  {net.server.ipv4:<15} {net.server.ipv6:<16} pid {net.server.pid}"]
    if net.router is not None:
        lines.append(f"  router  {'(between them)':<32} pid {net.router.pid}")
    lines.append(f"  link    {net.shaping.words()}, MTU {net.mtu}")
    for knob, how in net.mechanisms.items():
        lines.append(f"    {knob:<7} {how}")
    if net.queue is not None:
        q = net.queue
        lines.append(f"    queue   tbf limit {q.limit:,} bytes, burst {q.burst:,} bytes")
    return lines


def run_up(args: argparse.Namespace) -> int:
    from tcplab.net import control

    net = control.up(args.name, shaping_of(args), router=args.router)
    if args.json:
        emit_json({"net": net})
        return 0
    for line in _lines(net):
        out(line)
    out(f"run: tcplab net exec {net.name} server|client -- CMD   (TCPLAB_SERVER={net.server.ipv4})")
    return 0


def run_exec(args: argparse.Namespace) -> int:
    from tcplab.net import control

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    control.execute(args.name, args.side, cmd)
    return 0  # not reached: execve replaced us


def run_show(args: argparse.Namespace) -> int:
    from tcplab.net import control

    nets, stale = control.show()
    for name in stale:
        note(f"tcplab: removed the record of net {name!r}: its holder is gone")
    if args.json:
        emit_json({"nets": nets})
        return 0
    if not nets:
        out("no nets (tcplab net up NAME makes one)")
    for net in nets:
        for line in _lines(net):
            out(line)
    return 0


def run_down(args: argparse.Namespace) -> int:
    from tcplab.net import control

    result = control.down(args.name)
    if args.json:
        emit_json({"name": args.name, "stopped": [{"pid": p, "command": c}
                                                  for p, c in result.stopped],
                   "left": result.left})
        return 0 if not result.left else 1
    stopped = ", ".join(f"{c} (pid {p})" for p, c in result.stopped)
    if stopped:
        out(f"stopped in net {args.name}: {stopped}")
    if result.left:
        note(f"tcplab: processes still in net {args.name}'s namespaces: "
             + ", ".join(map(str, result.left)))
        return 1
    out(f"net {args.name} is down: no namespace, link, qdisc, nftables table or "
        "delay line of it is left")
    return 0
