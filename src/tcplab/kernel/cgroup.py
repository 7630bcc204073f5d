"""``/proc/PID/cgroup``: which container, pod or systemd unit a process runs in.

Each line is ``hierarchy-ID:controllers:path`` (cgroups(7)); cgroup v2 has the one
line ``0::/path``, v1 one line per hierarchy. The path is what the container
runtime or systemd named the group, so the owner a person would recognise is read
from it:

- Docker: ``/system.slice/docker-<64 hex>.scope`` (systemd driver) or
  ``/docker/<64 hex>`` (cgroupfs driver);
- containerd's CRI plugin, CRI-O and Podman: ``cri-containerd-<id>.scope``,
  ``crio-<id>.scope``, ``libpod-<id>.scope`` (``/libpod_parent/libpod-<id>``);
- Kubernetes: a ``kubepods`` path with ``pod<UID>`` (``_`` for ``-`` under the
  systemd driver: ``kubepods-burstable-pod1234_5678.slice``), the container's id last;
- systemd: the innermost ``*.service`` (or ``*.scope``) unit.

Pure: text in, a record out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RUNTIMES = (
    ("docker", re.compile(r"(?:^|/)docker[-/]([0-9a-f]{64})(?:\.scope)?(?:/|$)")),
    ("containerd", re.compile(r"(?:^|/)cri-containerd-([0-9a-f]{64})\.scope")),
    # systemd driver: crio-<id>.scope; cgroupfs driver: .../pod<UID>/crio-<id>
    ("cri-o", re.compile(r"(?:^|/)crio-(?:conmon-)?([0-9a-f]{64})(?:\.scope)?(?:/|$)")),
    ("podman", re.compile(r"(?:^|/)libpod-(?:conmon-)?([0-9a-f]{64})(?:\.scope)?(?:/|$)")),
)
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
_K8S_ID = re.compile(r"/kubepods[^ ]*/pod[^/]+/([0-9a-f]{64})(?:/|$)")
_UNIT = re.compile(r"([^/]+\.(?:service|scope))(?:/|$)")


@dataclass(frozen=True, slots=True)
class CgroupOwner:
    path: str  # the cgroup path read (v2's, else the systemd or first v1 one)
    runtime: str | None = None  # docker, containerd, cri-o, podman, or kubernetes
    container: str | None = None  # the container's id (64 hex)
    pod: str | None = None  # the Kubernetes pod's UID (with dashes)
    unit: str | None = None  # the innermost systemd unit, when no container

    def words(self) -> str:
        """``docker 3f2a1b9c0d4e``, ``pod 1234... container 3f2a...``, ``unit nginx.service``."""
        parts = []
        if self.pod:
            parts.append(f"pod {self.pod}")
        if self.container:
            parts.append(f"{self.runtime or 'container'} {self.container[:12]}")
        if not parts and self.unit:
            parts.append(f"unit {self.unit}")
        return ", ".join(parts)


def parse_cgroup(text: str) -> CgroupOwner | None:
    """The owner named by a /proc/PID/cgroup text (None: no line with a path)."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[2].startswith("/"):
            paths.setdefault(parts[0] if parts[0] == "0" else parts[1], parts[2])
    path = paths.get("0") or paths.get("name=systemd") or next(iter(paths.values()), None)
    if path is None:
        return None
    runtime = container = None
    for name, rx in _RUNTIMES:
        m = rx.search(path)
        if m:
            runtime, container = name, m.group(1)
            break
    pod_m = _POD.search(path)
    pod = pod_m.group(1).replace("_", "-") if pod_m else None
    if pod and container is None:
        k8s = _K8S_ID.search(path)
        if k8s:
            runtime, container = "kubernetes", k8s.group(1)
    unit = None
    if container is None and pod is None:
        units = _UNIT.findall(path)
        unit = units[-1] if units else None
    return CgroupOwner(path, runtime, container, pod, unit)
