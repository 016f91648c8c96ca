"""For targets whose parser reads a path: one temporary file, rewritten with each input and
removed at exit."""

from __future__ import annotations

import atexit
import os
import tempfile


class ScratchFile:
    def __init__(self, prefix: str, suffix: str) -> None:
        self._fd, self.path = tempfile.mkstemp(prefix=prefix, suffix=suffix)
        atexit.register(os.unlink, self.path)

    def holding(self, data: bytes) -> str:
        """The file's path, the file holding exactly `data`."""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        return self.path
