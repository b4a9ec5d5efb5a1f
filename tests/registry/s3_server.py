"""A real S3 API server for tests: moto's ``moto_server`` on 127.0.0.1 and a free port, in memory."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# the venv's console script (on PATH or beside this interpreter)
MOTO_SERVER = shutil.which("moto_server") or next(
    (str(p) for p in [Path(sys.executable).parent / "moto_server"] if p.exists()), None
)
CREDENTIALS = {  # moto accepts any; they reach boto3 through its standard chain (the environment)
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """One ``moto_server`` process; ``stop`` and ``start`` again keep its port (an outage and a recovery;
    moto keeps its data in memory, so a restart empties it)."""

    def __init__(self, log: Path, port: int | None = None):
        self.log = log
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        assert MOTO_SERVER is not None and self.process is None
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [MOTO_SERVER, "-H", "127.0.0.1", "-p", str(self.port)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"moto_server did not answer within 30 s; see {self.log}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None
