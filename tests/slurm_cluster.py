"""A throw-away Slurm cluster of one node for tests: Debian's slurmctld, slurmd and munge.

Preemption and requeueing are promises about what Slurm does to a job's processes (which
signals, to whom, in which order, and that a requeued task comes back), so the tests submit
to a real controller and a real node daemon rather than a stand-in. Everything lives in a
fresh temporary folder: a munge key and socket of its own, the controller's state, the
node's spool, free ports, and a slurm.conf that every client call finds through SLURM_CONF
(``env``). No cgroups: processes are tracked by their parent ids (proctrack/linuxproc), which
is how a container or a CI machine can run it. Slurm's daemons must run as root to start jobs,
so without root (or without the binaries) the tests skip, loudly.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from conftest import free_port

BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel",
            "munged", "munge", "unmunge")
#: States after which a task's processes are gone for good.
DONE = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                  "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"})


class Unavailable(RuntimeError):
    """No Slurm or munge here (and none could be installed), or not root."""


def _exe(name: str) -> str | None:
    """A daemon's path: /usr/sbin is not on every PATH, even root's."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


@dataclass
class Cluster:
    root: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to talk to this cluster (sbatch passes it on to the jobs)."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                           env={**os.environ, **self.env})
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip() or r.stdout.strip()}")
        return r

    def tasks(self, job: str) -> dict[str, str]:
        """Each array task of ``job`` (``JOB_TASK``) and its state, as squeue sees them."""
        out = self.run("squeue", "-h", "-r", "-t", "all", "-j", job, "-o", "%i %T",
                       check=False).stdout
        return dict(line.split() for line in out.splitlines() if len(line.split()) == 2)

    def wait_for(self, job: str, states: set[str], timeout: float = 180) -> dict[str, str]:
        """Until every task of ``job`` is in one of ``states``; returns them."""
        deadline = time.time() + timeout
        while True:
            tasks = self.tasks(job)
            if tasks and all(s in states for s in tasks.values()):
                return tasks
            if time.time() > deadline:
                raise AssertionError(f"job {job} never reached {sorted(states)}: {tasks}\n"
                                     f"{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, n: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-n:]}"
                         for p in sorted((self.root / "log").glob("*.log")))

    def stop(self) -> None:
        """Cancel every job, wait for them to leave the node, then stop the daemons."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--user", "root", check=False)
            deadline = time.time() + 45  # past KillWait, should a process ignore TERM
            while time.time() < deadline:
                out = self.run("squeue", "-h", "-t", "RUNNING,COMPLETING,PENDING",
                               check=False).stdout
                if not out.strip():
                    break
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):  # the reverse of the start
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _node_line() -> str:
    """This machine's CPUs and memory as slurmd sees them, for a node called localhost."""
    out = subprocess.run([_exe("slurmd"), "-C"], capture_output=True, text=True).stdout
    first = out.splitlines()[0] if out else ""
    cpus = int(m.group(1)) if (m := re.search(r"\bCPUs=(\d+)", first)) else os.cpu_count() or 1
    mem = int(m.group(1)) if (m := re.search(r"\bRealMemory=(\d+)", first)) else 1000
    # Two tasks at once at least, so that one task can recover another's trial.
    return f"CPUs={max(cpus, 2)} RealMemory={mem}"


def _config(root: Path, ctld_port: int, slurmd_port: int) -> str:
    host = socket.gethostname().split(".")[0]
    return f"""\
ClusterName=hptest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root / 'munge.sock'}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'log' / 'slurmctld.log'}
SlurmdLogFile={root / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
KillWait=30
MinJobAge=60
ReturnToService=2
InactiveLimit=0
Waittime=0
NodeName=localhost NodeHostname={host} NodeAddr=127.0.0.1 {_node_line()} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def start_cluster() -> Cluster:
    """munged, slurmctld and slurmd in a fresh temp folder; raises Unavailable without them."""
    missing = [b for b in BINARIES if _exe(b) is None]
    if missing:
        raise Unavailable(f"missing {' '.join(missing)} (Debian: apt-get install slurm-wlm "
                          "munge; `make sysdeps` does it when run as root)")
    if os.geteuid() != 0:
        raise Unavailable("slurmd must run as root to start jobs, and this is not root")
    root = Path(tempfile.mkdtemp(prefix="hpsearch-slurm-"))
    cluster = Cluster(root)
    try:
        _start(cluster)
    except Exception as e:
        tail = cluster.log_tail()
        cluster.stop()
        raise RuntimeError(f"the test Slurm cluster did not start: {e}\n{tail}") from e
    return cluster


def _start(cluster: Cluster) -> None:
    root = cluster.root
    for d in ("state", "spool", "log"):
        (root / d).mkdir()
    os.chmod(root, 0o755)  # munged insists that others may reach its socket
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    log = open(root / "log" / "daemons.log", "ab")  # noqa: SIM115 (the daemons hold it)
    # munged refuses to run as root without --force; -F keeps it our child, to stop by pid.
    cluster.procs["munged"] = subprocess.Popen(
        [_exe("munged"), "-F", "--force", f"--socket={root / 'munge.sock'}", f"--key-file={key}",
         f"--log-file={root / 'log' / 'munged.log'}", f"--pid-file={root / 'munged.pid'}",
         f"--seed-file={root / 'munged.seed'}"], stdout=log, stderr=log)
    deadline = time.time() + 20
    while True:
        cred = subprocess.run(["munge", "-n", f"--socket={root / 'munge.sock'}"],
                              capture_output=True)
        if cred.returncode == 0:
            check = subprocess.run(["unmunge", f"--socket={root / 'munge.sock'}"],
                                   input=cred.stdout, capture_output=True)
            if check.returncode == 0:
                break
        if time.time() > deadline or cluster.procs["munged"].poll() is not None:
            raise RuntimeError("munged did not start: " + cred.stderr.decode(errors="replace"))
        time.sleep(0.1)

    cluster.conf.write_text(_config(root, free_port(), free_port()))
    env = {**os.environ, **cluster.env}
    # -D: in the foreground, our children; -i: no state from an earlier run.
    cluster.procs["slurmctld"] = subprocess.Popen([_exe("slurmctld"), "-D", "-i", "-f",
                                                  str(cluster.conf)],
                                                 stdout=log, stderr=log, env=env)
    cluster.procs["slurmd"] = subprocess.Popen([_exe("slurmd"), "-D", "-N", "localhost", "-f",
                                               str(cluster.conf)],
                                              stdout=log, stderr=log, env=env)
    deadline = time.time() + 60
    while True:
        out = cluster.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
        if out == "idle":
            return
        for name, p in cluster.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}")
        if time.time() > deadline:
            raise RuntimeError(f"the node never became idle (sinfo: {out!r})")
        time.sleep(0.2)
