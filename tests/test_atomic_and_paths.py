"""Atomic writes under concurrent threads and a tight umask; the one check of user-given names in paths."""

from __future__ import annotations

import os
import stat
import sys
import threading
from pathlib import Path

from synthrel_lightning.atomic import atomic_write_text, file_mode


def test_atomic_writes_never_loosen_the_umask_of_files_other_threads_create(tmp_path: Path) -> None:
    old = os.umask(0o077)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, as a busy process does
    stop = threading.Event()
    errors: list[BaseException] = []

    def atomic_writer(k: int) -> None:
        i = 0
        try:
            while not stop.is_set():
                atomic_write_text(tmp_path / "atomic" / f"{k}-{i % 50}.txt", "x")
                i += 1
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    def mode_reader() -> None:
        while not stop.is_set():
            assert file_mode() == 0o600

    def plain_writer(k: int) -> None:
        folder = tmp_path / f"plain{k}"
        folder.mkdir()
        for i in range(1500):
            os.close(os.open(folder / f"{i}.txt", os.O_WRONLY | os.O_CREAT, 0o666))

    try:
        writers = [threading.Thread(target=atomic_writer, args=(k,)) for k in range(2)]
        writers.append(threading.Thread(target=mode_reader))
        plain = [threading.Thread(target=plain_writer, args=(k,)) for k in range(3)]
        for t in writers + plain:
            t.start()
        for t in plain:
            t.join()
        stop.set()
        for t in writers:
            t.join()
    finally:
        os.umask(old)
        sys.setswitchinterval(interval)
    assert not errors
    files = [p for p in tmp_path.rglob("*.txt")]
    loose = [p for p in files if stat.S_IMODE(p.stat().st_mode) != 0o600]
    assert len(files) > 4500 and not loose, f"{len(loose)} of {len(files)} files not 0600, e.g. {loose[:3]}"
    assert not list(tmp_path.rglob(".tmp-*"))
