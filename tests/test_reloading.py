"""service.reloading: file signatures, and a value re-read only when its file changed."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service.reloading import FileWatch, signature, signatures


class Broken(ValueError):
    pass


class Loader:
    """Reads an int from a file; counts its reads. "broken" raises Broken, "crash" a RuntimeError."""

    def __init__(self, path: Path):
        self.path = path
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        text = self.path.read_text().strip()
        if text == "broken":
            raise Broken(f"{self.path}: broken")
        if text == "crash":
            raise RuntimeError("crash")
        return int(text)


def write(path: Path, text: str, *, mtime: int | None = None) -> None:
    """Replace ``path`` atomically, as the CLIs do; its mtime moves a second on (or to ``mtime``)."""
    stamp = mtime if mtime is not None else (path.stat().st_mtime_ns if path.exists() else 0) // 10**9 + 1
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.utime(tmp, (stamp, stamp))
    os.replace(tmp, path)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "value.txt"
    write(path, "1")
    return path


def test_signature_changes_with_the_file(path: Path) -> None:
    first = signature(str(path))
    assert first is not None and first == signature(str(path))
    write(path, "22")
    assert signature(str(path)) != first
    assert signature(str(path.with_name("missing"))) is None
    assert signatures([str(path), str(path.with_name("missing"))]) == (signature(str(path)), None)


def test_a_file_replaced_with_the_same_mtime_and_size_is_seen(path: Path) -> None:
    first = signature(str(path))
    write(path, "2", mtime=path.stat().st_mtime_ns // 10**9)  # what a coarse mtime shows for a quick edit
    assert signature(str(path)) != first  # a new inode


def test_the_file_is_read_again_only_when_it_changed(path: Path) -> None:
    loaded: list[int] = []
    load = Loader(path)
    watch = FileWatch(path, load, on_loaded=loaded.append)
    assert (watch.current(), watch.current(), load.reads) == (1, 1, 1)
    write(path, "2")
    assert (watch.current(), watch.current(), load.reads) == (2, 2, 2)
    assert loaded == [2], "on_loaded hears of reloads, not of the constructor's load"


def test_a_refused_version_keeps_the_last_good_value_and_is_logged_once(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    owner = logging.getLogger("tests.owner")
    load = Loader(path)
    watch = FileWatch(path, load, refused=Broken, log=owner, keeps="the old value stays")
    write(path, "broken")
    assert [watch.current() for _ in range(3)] == [1, 1, 1]
    assert load.reads == 2, "a refused version is not read again until the file changes"
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.name == "tests.owner" and record.getMessage() == f"{path}: broken; the old value stays"
    write(path, "3")
    assert watch.current() == 3


def test_other_errors_propagate_and_are_retried(path: Path) -> None:
    load = Loader(path)
    watch = FileWatch(path, load, refused=Broken)
    write(path, "crash")
    for reads in (2, 3):
        with pytest.raises(RuntimeError):
            watch.current()
        assert load.reads == reads
    write(path, "4")
    assert watch.current() == 4


def test_the_first_load_is_the_callers(path: Path) -> None:
    write(path, "broken")
    with pytest.raises(Broken):
        FileWatch(path, Loader(path), refused=Broken)


def test_with_an_initial_value_the_file_is_read_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "later.txt"
    load = Loader(path)
    watch = FileWatch(path, load, refused=Broken, initial=0)
    assert load.reads == 0
    write(path, "broken")
    assert watch.current() == 0 and load.reads == 1  # the initial value stands in for a last good one
    write(path, "5")
    assert watch.current() == 5


def test_concurrent_readers_of_a_change_share_one_load(path: Path) -> None:
    load = Loader(path)

    def slow_load() -> int:
        time.sleep(0.05)  # long enough for every reader to find the file changed
        return load()

    slow = FileWatch(path, slow_load)
    write(path, "6")
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda _: slow.current(), range(8))) == [6] * 8
    assert load.reads == 2
