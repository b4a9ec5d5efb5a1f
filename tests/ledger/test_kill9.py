"""kill -9 under load: every record whose future resolved (the answer went out) is in the database."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.ledger.conftest import stored_ids

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("kill_child.py")


def test_every_acknowledged_record_survives_sigkill(ledger_url: str) -> None:
    with subprocess.Popen(
        [sys.executable, str(CHILD), ledger_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        watchdog = threading.Timer(60, child.kill)  # a hung child fails the test instead of hanging it
        watchdog.start()
        try:
            assert child.stdout is not None and child.stderr is not None
            acknowledged = []
            while len(acknowledged) < 2000:  # well into the stream
                line = child.stdout.readline()
                assert line, f"the child stopped early: {child.stderr.read()}"
                acknowledged.append(line.strip())
            child.send_signal(signal.SIGKILL)
            rest = child.stdout.read()  # what it printed before it died, still in the pipe
            child.wait(10)
        finally:
            watchdog.cancel()
            child.kill()
    acknowledged += rest.split("\n")[:-1]  # a cut last line was not acknowledged
    assert child.returncode == -signal.SIGKILL

    in_database = set(stored_ids(ledger_url))
    missing = [request_id for request_id in acknowledged if request_id not in in_database]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:5]}"
    # what the database holds beyond them is what was committed but not yet printed: in flight
    assert len(in_database) >= len(set(acknowledged))
