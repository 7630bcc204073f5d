"""kernel.cgroup: the container, pod or unit named by /proc/PID/cgroup (issue 15).

The texts are the paths each runtime and driver writes (docker, containerd's CRI
plugin, CRI-O, Podman, Kubernetes under the systemd and the cgroupfs drivers,
systemd services, cgroup v1), and this machine's own /proc/self/cgroup.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tcplab.kernel.cgroup import parse_cgroup

ID = "3f2a1b9c0d4e" + "a" * 52
UID = "1234abcd-5678-9abc-def0-123456789abc"


@pytest.mark.pure
@pytest.mark.parametrize(("text", "runtime", "container", "pod", "unit"), [
    (f"0::/system.slice/docker-{ID}.scope\n", "docker", ID, None, None),
    (f"0::/docker/{ID}\n", "docker", ID, None, None),
    (f"12:pids:/docker/{ID}\n1:name=systemd:/docker/{ID}\n", "docker", ID, None, None),
    (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
     f"{UID.replace('-', '_')}.slice/cri-containerd-{ID}.scope\n", "containerd", ID, UID, None),
    (f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{ID}.scope\n",
     "cri-o", ID, UID, None),
    (f"0::/kubepods/burstable/pod{UID}/crio-{ID}\n", "cri-o", ID, UID, None),  # cgroupfs
    (f"0::/kubepods/burstable/pod{UID}/{ID}\n", "kubernetes", ID, UID, None),
    (f"0::/machine.slice/libpod-{ID}.scope/container\n", "podman", ID, None, None),
    ("0::/system.slice/nginx.service\n", None, None, None, "nginx.service"),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo.scope\n",
     None, None, None, "app-foo.scope"),
    ("0::/\n", None, None, None, None),
])
def test_owner_from_each_runtime_s_path(text: str, runtime: str | None, container: str | None,
                                        pod: str | None, unit: str | None) -> None:
    owner = parse_cgroup(text)
    assert owner is not None
    assert (owner.runtime, owner.container, owner.pod, owner.unit) == (runtime, container,
                                                                       pod, unit)


@pytest.mark.pure
def test_words_a_person_recognises() -> None:
    owner = parse_cgroup(f"0::/system.slice/docker-{ID}.scope\n")
    assert owner is not None and owner.words() == "docker 3f2a1b9c0d4e"
    pod = parse_cgroup(f"0::/kubepods/burstable/pod{UID}/{ID}\n")
    assert pod is not None and pod.words() == f"pod {UID}, kubernetes 3f2a1b9c0d4e"
    unit = parse_cgroup("0::/system.slice/nginx.service\n")
    assert unit is not None and unit.words() == "unit nginx.service"
    assert parse_cgroup("") is None


@pytest.mark.pure
def test_this_machine_s_own_cgroup_parses() -> None:
    owner = parse_cgroup(Path("/proc/self/cgroup").read_text())
    assert owner is not None and owner.path.startswith("/")
