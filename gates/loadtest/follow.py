"""Read a file while another process is still writing it: the raw k6 output is parsed as k6
produces it, so when k6 exits only its last lines are left to read and the verdict follows at
once. Counts the requests that went through, for progress. No ORM.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

REQUEST_MARK = b'"metric":"http_reqs","type":"Point"'


class FollowedFile(io.RawIOBase):
    """A binary stream over a growing file: reads wait for more bytes until ``finish()`` is
    called, then return what is left and end. ``requests`` counts k6 ``http_reqs`` points seen."""

    def __init__(self, path: Path, poll_seconds: float = 0.05):
        self.path = Path(path)
        self.poll_seconds = poll_seconds
        self.requests = 0
        self._finished = threading.Event()
        self._file = None
        self._tail = b""

    def readable(self) -> bool:
        return True

    def finish(self) -> None:
        """The writer is done: read to the end, then stop."""
        self._finished.set()

    def _open(self) -> bool:
        if self._file is None:
            try:
                self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
            except FileNotFoundError:
                return False
        return True

    def readinto(self, buffer) -> int:
        while True:
            finished = self._finished.is_set()  # read before trying, so no last bytes are missed
            if self._open():
                size = self._file.readinto(buffer)
                if size:
                    self._count(bytes(buffer[:size]))
                    return size
            if finished:
                return 0
            time.sleep(self.poll_seconds)

    def _count(self, data: bytes) -> None:
        # A mark split across two reads is counted once: keep the end of the previous chunk.
        joined = self._tail + data
        self.requests += joined.count(REQUEST_MARK)
        keep = len(REQUEST_MARK) - 1
        self._tail = joined[-keep:]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()
