"""``tcplab capture``: the packets of a port on ``lo``, like tcpdump, with the lab's words."""

from __future__ import annotations

import argparse
import datetime
import time
from typing import Any

from tcplab.cli import common
from tcplab.cli.output import emit_json, note, out

DESCRIPTION = """\
Captures TCP packets on the loopback interface ('lo' on Linux; 'lo0' is
macOS) from an AF_PACKET socket, with a classic BPF filter for the port
attached so the kernel drops everything else. Each packet shows once (the
outgoing copy loopback makes is dropped, as libpcap does), with tcpdump's
flags ([S], [S.], [.], [P.], [F.], [R]) and the lab's words beside them (SYN,
SYN-ACK, ACK, FIN, RST, data). --write saves a standard pcap file that
tcpdump, tshark and Wireshark read.

Ctrl-C (or SIGTERM) stops it after the packet in hand: the pcap file is
closed complete, every packet in it whole, and the exit status is 130.

Needs CAP_NET_RAW (root).
"""

EXAMPLES = """\
examples:
  sudo tcplab capture --port 8080
  sudo tcplab capture --port 8080 --count 10 --write handshake.pcap
  sudo tcplab capture --port 8080 --json --duration 5
"""


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, parents=[common.parent()],
                       help="capture the packets of a port on lo (tcpdump -i lo), write pcap",
                       description=DESCRIPTION, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=common.port, default=0, help="only this TCP port (either end)")
    p.add_argument("--count", type=common.positive_int, metavar="N", help="stop after N packets")
    p.add_argument("--duration", type=common.seconds, metavar="S", help="stop after S seconds")
    p.add_argument("--write", metavar="FILE.pcap", help="also write the packets to a pcap file")
    p.add_argument("--interface", default="lo", help="the interface (default lo)")
    common.add_json(p, "one object per packet")
    p.set_defaults(func=run)


def _where(addr: str, port: int) -> str:
    return f"{addr}.{port}"


def packet_line(pk: Any) -> str:
    stamp = datetime.datetime.fromtimestamp(pk.t).strftime("%H:%M:%S.%f")
    ip = "IP6" if ":" in pk.src else "IP"
    parts = [f"seq {pk.seq}"]
    if pk.flags & 0x10:
        parts.append(f"ack {pk.ack}")
    parts.append(f"win {pk.win}")
    if pk.options:
        parts.append(f"options [{','.join(pk.options)}]")
    parts.append(f"length {pk.length}")
    return (f"{stamp} {ip} {_where(pk.src, pk.sport)} > {_where(pk.dst, pk.dport)}: "
            f"Flags [{pk.flag_text}], {', '.join(parts)}    {pk.lab_word}")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from tcplab.errors import UsageError
    from tcplab.interrupts import StopFlag, deferred
    from tcplab.kernel.packets import PCAP_HEADER, PacketError, decode_frame, pcap_record
    from tcplab.observe.capture import Capture

    # Ctrl-C and SIGTERM only set this flag, looked at between packets: no
    # signal can cut a pcap record (or a JSON line) in half.
    stop = StopFlag()
    cap = Capture(args.port, args.interface)  # first: no file is left when it fails
    writer = None
    if args.write:
        try:
            writer = open(args.write, "wb")  # noqa: SIM115 - closed in finally
        except OSError as exc:
            cap.close()
            raise UsageError(f"cannot write {args.write}: {exc.strerror}") from None
        writer.write(PCAP_HEADER)
    note(f"capturing on {args.interface}" + (f", port {args.port}" if args.port else "")
         + (f", writing {args.write}" if args.write else "") + "; Ctrl-C stops")
    seen = 0
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        while not stop and (args.count is None or seen < args.count) and (
                deadline is None or time.monotonic() < deadline):
            left = 0.5 if deadline is None else max(0.01, min(0.5, deadline - time.monotonic()))
            for t, frame in cap.frames(left):
                try:
                    pk = decode_frame(frame, t)
                except PacketError as exc:
                    note(f"undecodable frame ({len(frame)} bytes): {exc}")
                    continue
                if pk is None:
                    continue
                seen += 1
                if writer is not None:
                    writer.write(pcap_record(t, frame))
                    writer.flush()
                if args.json:
                    body = asdict(pk)
                    body.update(flags=pk.flag_text, word=pk.lab_word)
                    emit_json(body)
                else:
                    out(packet_line(pk))
    finally:
        with deferred():
            dropped = cap.drops()
            cap.close()
            if writer is not None:
                writer.close()
    written = f" written to {args.write}" if args.write else ""
    if stop and args.write:  # say that an interrupted capture left a whole file
        written += ", a complete pcap file (stopped between packets)"
    note(f"{seen} packets{written}"
         + (f"; {dropped} dropped by the kernel (not read fast enough)" if dropped else ""))
    stop.raise_if_set()  # cli/main.py says "interrupted" (130)
    return 0
