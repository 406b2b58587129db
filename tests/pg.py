"""A throw-away PostgreSQL server for tests: Debian's binaries, a temp cluster, 127.0.0.1.

Shared studies are only as good as the database under them, so the worker tests run against a
real server rather than a stand-in. ``initdb`` refuses to run as root, and a CI machine is
usually root, so there the cluster belongs to the ``postgres`` account (created by Debian's
package) and every server command runs through ``runuser``. The server listens on 127.0.0.1
only, on a free port, with a password (scram) so that the password path of a storage URL is
exercised too.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from conftest import free_port

USER, PASSWORD, DATABASE = "hp", "pg-test-s3cret", "hpsearch"


class Unavailable(RuntimeError):
    """No PostgreSQL binaries on this machine (and none could be installed)."""


def find_bindir() -> Path | None:
    """The newest installed server's bin folder: Debian's layout, pg_config, or PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    for tool in ("pg_config",):
        exe = shutil.which(tool)
        if exe:
            out = subprocess.run([exe, "--bindir"], capture_output=True, text=True)
            bindir = Path(out.stdout.strip())
            if (bindir / "initdb").exists():
                return bindir
    exe = shutil.which("initdb")
    return Path(exe).parent if exe else None


@dataclass
class Server:
    bindir: Path
    root: Path
    port: int
    as_user: str | None  # run server commands as this account (when we are root)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def url(self, password: str = PASSWORD) -> str:
        return f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{self.port}/{DATABASE}"

    def _cmd(self, *args: str) -> list[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        return ["runuser", "-u", self.as_user, "--", *cmd] if self.as_user else cmd

    def start(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        self._own(pwfile)
        subprocess.run(
            self._cmd("initdb", "-D", str(self.datadir), "-U", USER, f"--pwfile={pwfile}",
                      "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8",
                      "--no-sync"),
            check=True, capture_output=True, text=True,
        )
        self.resume()
        import psycopg

        deadline = time.time() + 30
        while True:
            try:
                with psycopg.connect(host="127.0.0.1", port=self.port, user=USER,
                                     password=PASSWORD, dbname="postgres",
                                     autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {DATABASE}")
                return
            except psycopg.OperationalError:
                if time.time() > deadline:
                    raise

    def resume(self) -> None:
        """Start the server on its existing cluster (after ``start``'s initdb, or a ``halt``)."""
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200 -c shared_buffers=32MB")
        subprocess.run(
            self._cmd("pg_ctl", "-D", str(self.datadir), "-l", str(self.root / "server.log"),
                      "-o", opts, "-w", "-t", "60", "start"),
            check=True, capture_output=True, text=True,
        )

    def halt(self) -> None:
        """Stop the server and keep its data: a restart, as the clients see it."""
        subprocess.run(self._cmd("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop"),
                       check=True, capture_output=True, text=True)

    def stop(self) -> None:
        subprocess.run(self._cmd("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "stop"),
                       capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def _own(self, path: Path) -> None:
        if self.as_user:
            pw = pwd.getpwnam(self.as_user)
            os.chown(path, pw.pw_uid, pw.pw_gid)


def start_server() -> Server:
    """initdb + start a cluster in a fresh temp folder; raises Unavailable without binaries."""
    bindir = find_bindir()
    if bindir is None:
        raise Unavailable(
            "PostgreSQL server binaries not found (Debian: apt-get install postgresql; "
            "`make sysdeps` does it when run as root)"
        )
    as_user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable("running as root and there is no 'postgres' account to run "
                              "the server as (Debian's postgresql package creates it)") from None
        as_user = "postgres"
    # Not under pytest's tmp folder: that one is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="hpsearch-pg-"))
    server = Server(bindir, root, free_port(), as_user)
    server._own(root)
    try:
        server.start()
    except BaseException:
        log = root / "server.log"
        detail = log.read_text()[-2000:] if log.exists() else ""
        server.stop()
        if detail:
            warnings.warn(f"PostgreSQL server log:\n{detail}", stacklevel=1)
        raise
    return server
