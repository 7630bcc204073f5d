"""A packet-level delay line, for kernels without netem (CONFIG_NET_SCH_NETEM).

It runs in the router namespace and sees every forwarded packet once, through a
TUN device: a policy rule (``ip rule iif rc|rs lookup 100``) sends what comes in
on the router's veths to table 100, whose only route is the TUN device. The
line reads each packet from the TUN file descriptor, holds it for the delay
(plus a uniform draw in [-jitter, +jitter]), and writes it back into the same
TUN device; the kernel then receives it as if it came in on dl0, looks up the
main table (the rule matches only rc and rs) and forwards it out of the veth
toward its destination. Each direction is delayed once, by the same amount.

Packets from one source address leave in the order they came (a later packet
is never due before an earlier one), unlike netem with jitter, which reorders
(net/sched/sch_netem.c, tfifo_enqueue sorts by time_to_send): reordering makes TCP
see duplicate ACKs and retransmit, which is not what "jitter" is meant to show.

How precisely it holds a packet is measured in bench/delayline.py (see
bench/results.md): select() wakes it with a timeout in microseconds, so the
error is the scheduler's wake-up latency, not a 1 ms tick.
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import os
import random
import select
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

# include/uapi/linux/if_tun.h
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

#: At most this many bytes are held (a full line drops, as a full netem queue
#: would): 64 MiB, far above any bandwidth-delay product tcplab asks for.
MAX_HELD_BYTES = 64 << 20
#: Packets read in a row before the line looks at what is due.
BATCH = 64


def open_tun(name: str) -> int:
    """Create the TUN device ``name`` (layer 3, no packet-info header) and return
    its file descriptor, non-blocking. The device exists while the fd is open."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        os.set_blocking(fd, False)
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass(slots=True)
class Counters:
    forwarded: int = 0
    dropped_full: int = 0  # the line held MAX_HELD_BYTES already
    dropped_write: int = 0  # the TUN write failed (the device went away)


def source_key(packet: bytes) -> bytes:
    """The source address (IPv4 bytes 12-16, IPv6 bytes 8-24): order is kept per source."""
    if packet and packet[0] >> 4 == 6:
        return packet[8:24]
    return packet[12:16]


class DelayLine:
    def __init__(self, fd: int, delay_s: float, jitter_s: float = 0.0,
                 rng: random.Random | None = None,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.fd = fd
        self.delay_ns = int(delay_s * 1e9)
        self.jitter_ns = int(jitter_s * 1e9)
        self.rng = rng or random.Random()
        self.clock = clock
        self.heap: list[tuple[int, int, bytes]] = []
        self.last_due: dict[bytes, int] = {}
        self.held = 0
        self.seq = 0
        self.counters = Counters()

    def due(self, packet: bytes, now: int) -> int:
        when = now + self.delay_ns
        if self.jitter_ns:
            when += self.rng.randint(-self.jitter_ns, self.jitter_ns)
            key = source_key(packet)
            when = max(when, self.last_due.get(key, 0))
            self.last_due[key] = when
        return when

    def take(self, packet: bytes, now: int) -> None:
        if self.held + len(packet) > MAX_HELD_BYTES:
            self.counters.dropped_full += 1
            return
        self.seq += 1
        heapq.heappush(self.heap, (self.due(packet, now), self.seq, packet))
        self.held += len(packet)

    def release(self, now: int) -> None:
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, _, packet = heapq.heappop(heap)
            self.held -= len(packet)
            try:
                os.write(self.fd, packet)
                self.counters.forwarded += 1
            except OSError:
                self.counters.dropped_write += 1

    def read_some(self) -> None:
        for _ in range(BATCH):
            try:
                packet = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            # The time a packet came is taken when it is read, before the next read.
            self.take(packet, self.clock())

    def run(self, wake_fd: int, stop: Callable[[], bool]) -> None:
        """Until ``stop()``: ``wake_fd`` becomes readable when a signal arrived
        (signal.set_wakeup_fd), so stopping needs no polling."""
        while not stop():
            now = self.clock()
            timeout = None if not self.heap else max(0.0, (self.heap[0][0] - now) / 1e9)
            readable, _, _ = select.select([self.fd, wake_fd], [], [], timeout)
            if wake_fd in readable:
                try:
                    os.read(wake_fd, 512)
                except BlockingIOError:
                    pass
            if self.fd in readable:
                self.read_some()
            self.release(self.clock())
