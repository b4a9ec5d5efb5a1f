"""A throwaway PostgreSQL server (Debian's postgresql package) on 127.0.0.1, for tests and benchmarks.

PostgreSQL refuses to run as root: as root, the cluster's folder belongs to the ``postgres`` user
and the server runs as that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def find_bin_dir() -> Path | None:
    """The folder that holds initdb, pg_ctl and postgres (newest version first), or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(os.path.realpath(on_path)).parent))
    for folder in candidates:
        if all((Path(folder) / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    return None


def _version(folder: str) -> int:
    part = Path(folder).parent.name
    return int(part) if part.isdigit() else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="loragate-pg-")))
    port: int = field(default_factory=_free_port)
    user: str = "loragate"
    fsync: bool = True  # tests turn it off: they kill clients, never the server

    def _as_owner(self) -> dict[str, Any]:
        """subprocess arguments that run a command as the cluster's owner (``postgres`` when we are root)."""
        if os.geteuid() != 0:
            return {}
        owner = pwd.getpwnam("postgres")
        return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}

    def start(self) -> PostgresServer:
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        data = self.root / "data"
        run = {"check": True, "capture_output": True, "text": True, "timeout": 60, **self._as_owner()}
        subprocess.run(
            [self.bin_dir / "initdb", "-D", data, "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync"],
            **run,
        )
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c max_connections=50"
        if not self.fsync:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        subprocess.run(
            [
                self.bin_dir / "pg_ctl",
                "-D",
                data,
                "-o",
                options,
                "-l",
                self.root / "server.log",
                "-w",
                "start",
            ],
            **run,
        )
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            [self.bin_dir / "pg_ctl", "-D", self.root / "data", "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            **self._as_owner(),
        )
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        path = self.root / "server.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""
