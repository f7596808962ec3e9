"""What the OS says about this machine right now, read from /proc and the cgroup files (Linux); no torch.

    cores()         the CPUs this process may run on (affinity) and its cgroup CPU quota, as a number of threads
    cpu_sample()    CPU-time counters: the machine's busy time on our CPUs, our cgroup's, this process's own
    others_cores()  from two samples: how many cores other processes kept busy in between
    memory_free()   bytes this process may still allocate: the kernel's MemAvailable, within the cgroup's limit

Everything reads below ``root`` (``/`` on a real machine) so tests can build a fake /proc and /sys/fs/cgroup.
Where a file is missing (macOS, Windows, a container that hides it), the answer falls back to what the standard
library knows (``os.cpu_count``), or to None: "no limit known".
"""

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/")
UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge number (9223372036854771712)


@dataclass(frozen=True)
class Cores:
    usable: int  # threads worth running at once: the CPUs we may use, within the quota; at least 1
    cpus: tuple[int, ...]  # the CPUs this process may run on (sched_getaffinity)
    quota: float | None  # the cgroup's CPU quota in cores (e.g. 1.5), None when there is none

    @property
    def quota_binds(self) -> bool:
        """True when the quota, not the CPU count, is what limits us: then the cgroup's usage is what we share."""
        return self.quota is not None and self.quota < len(self.cpus)


@dataclass(frozen=True)
class CpuSample:
    at: float  # time.monotonic()
    busy: float | None  # CPU-seconds spent busy on our CPUs by everyone (/proc/stat), None if unreadable
    cgroup: float | None  # CPU-seconds used by our cgroup (all its processes), None without a readable cgroup
    own: float  # CPU-seconds used by this process (all its threads)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _cgroup_dirs(controller: str, root: Path) -> list[Path]:
    """The cgroup folders that hold ``controller``'s files for this process, innermost first (ancestors' limits
    apply too). cgroup v2 ("0::/path") and v1 ("N:cpu,cpuacct:/path"), found through /proc/self/mountinfo."""
    memberships = {}
    for line in (_read(root / "proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for name in parts[1].split(",") if parts[1] else [""]:
                memberships[name] = parts[2]
    found = []
    for line in (_read(root / "proc/self/mountinfo") or "").splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        fstype, _, options = line.split(" - ", 1)[1].split()[:3]
        if fstype == "cgroup2":
            key = ""
        elif fstype == "cgroup" and controller in options.split(","):
            key = controller
        else:
            continue
        path, mount_root, mount_point = memberships.get(key), fields[3], fields[4]
        if path is None:
            continue
        relative = os.path.relpath(path, mount_root) if path.startswith(mount_root) else "."
        folder = root / mount_point.lstrip("/") / ("" if relative == "." else relative)
        top = root / mount_point.lstrip("/")
        while True:
            if folder.is_dir():
                found.append(folder)
            if folder == top or top not in folder.parents:
                break
            folder = folder.parent
    return found


def _quota_of(folder: Path) -> float | None:
    """The CPU quota set on one cgroup folder, in cores (v2 cpu.max "200000 100000", v1 cfs_quota/period)."""
    v2 = (_read(folder / "cpu.max") or "").split()
    if len(v2) == 2 and v2[0] != "max":
        return int(v2[0]) / int(v2[1])
    v1_quota, v1_period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if v1_quota and v1_period and int(v1_quota) > 0:
        return int(v1_quota) / int(v1_period)
    return None


def cpu_quota(root: Path = ROOT) -> float | None:
    """The tightest CPU quota over this process's cgroup and its ancestors, in cores (None: no quota)."""
    quotas = [quota for folder in _cgroup_dirs("cpu", root) if (quota := _quota_of(folder)) is not None]
    return min(quotas) if quotas else None


def cores(root: Path = ROOT) -> Cores:
    """The CPUs this process may use and how many threads that makes: the quota rounded down (1.5 cores -> 1:
    a second thread would be throttled at every period, and the threads wait for each other)."""
    try:
        cpus = tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        cpus = tuple(range(os.cpu_count() or 1))
    quota = cpu_quota(root)
    usable = len(cpus) if quota is None else min(len(cpus), math.floor(quota + 1e-9))
    return Cores(usable=max(1, usable), cpus=cpus, quota=quota)


def _busy_seconds(cpus: tuple[int, ...], root: Path) -> float | None:
    """CPU-seconds the CPUs ``cpus`` spent on anything but idle and I/O wait (/proc/stat, in clock ticks;
    time stolen by a hypervisor counts as busy: it was not ours to use)."""
    text = _read(root / "proc/stat")
    if text is None:
        return None
    wanted, total = {f"cpu{n}" for n in cpus}, 0
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] in wanted:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in (fields[1:9] + ["0"] * 8)[:8])
            total += user + nice + system + irq + softirq + steal
    return total / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else None


def _cgroup_seconds(root: Path) -> float | None:
    """CPU-seconds used by the cgroup whose quota binds us, all its processes together (v2 cpu.stat usage_usec;
    v1 cpuacct.usage in ns, usually in the same folder as the quota: "cpu,cpuacct")."""
    for folder in _cgroup_dirs("cpu", root):
        if _quota_of(folder) is None:
            continue
        for line in (_read(folder / "cpu.stat") or "").splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
        usage = _read(folder / "cpuacct.usage")
        return int(usage) / 1e9 if usage else None
    return None


def cpu_sample(cores_: Cores, root: Path = ROOT) -> CpuSample:
    """The counters now (a few small file reads, well under a millisecond)."""
    cgroup = _cgroup_seconds(root) if cores_.quota_binds else None
    return CpuSample(time.monotonic(), _busy_seconds(cores_.cpus, root), cgroup, _own_seconds())


def _own_seconds() -> float:
    """CPU-seconds of this process and of its children that ended (a folder's decoding workers are ours, not
    other processes': without them the first choice after decoding a new folder saw a busy machine)."""
    times = os.times()
    return time.process_time() + times.children_user + times.children_system


def others_cores(before: CpuSample, after: CpuSample) -> float | None:
    """Cores other processes kept busy between two samples: the cgroup's use without ours when a quota binds
    (the others that share our quota), else our CPUs' busy time without ours. None when nothing is readable or
    the samples are too close together to say (clock ticks are 10 ms)."""
    seconds = after.at - before.at
    if seconds < 0.1:
        return None
    if before.cgroup is not None and after.cgroup is not None:
        used = after.cgroup - before.cgroup
    elif before.busy is not None and after.busy is not None:
        used = after.busy - before.busy
    else:
        return None
    return max(0.0, (used - (after.own - before.own)) / seconds)


def memory_free(root: Path = ROOT) -> int | None:
    """Bytes this process may still allocate before the kernel reclaims hard or kills it: /proc/meminfo's
    MemAvailable, lowered to the room left under the tightest cgroup memory limit (usage without the page
    cache it could drop). None when neither is readable."""
    limits = []
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            limits.append(int(line.split()[1]) * 1024)
    for folder in _cgroup_dirs("memory", root):
        limit = _read(folder / "memory.max") or _read(folder / "memory.limit_in_bytes")
        if not limit or limit.strip() == "max" or int(limit) >= UNLIMITED:
            continue
        usage = _read(folder / "memory.current") or _read(folder / "memory.usage_in_bytes") or "0"
        stat = dict(
            (line.split() + ["0"])[:2] for line in (_read(folder / "memory.stat") or "").splitlines() if line.strip()
        )
        cache = int(stat.get("inactive_file", stat.get("total_inactive_file", 0)))
        limits.append(max(0, int(limit) - max(0, int(usage) - cache)))
    return min(limits) if limits else None
