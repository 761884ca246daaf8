"""Copying the pickle log's frames into a compaction's new log, and indexing them.

Used by :mod:`~sessionstore.backends.picklecompact`:

* :func:`copy_live`: phase 1, no lock held: the frames a frozen index points
  at, before byte ``base`` of the old log, raw and CRC-checked, in key order;
  the new log's index is built as they are written.
* :class:`Tail`: the frames appended to the old log since ``base``, copied
  as they are and applied to the new index, in rounds, without the lock: old
  byte ``o >= base`` lands at ``tail_at + o - base`` (the origin frame of the
  new log records ``base`` and ``tail_at``).
* :func:`copy_range`: phase 2, under the lock: the last bytes, as they are.

A frame that fails its CRC stops the copy (:class:`~.picklelog.Damaged`):
the log is never rewritten without it.
"""

from __future__ import annotations

import os
import time
from array import array
from typing import BinaryIO

from ..errors import BackendError
from . import picklelog
from .pickleindex import Base, OffsetIndex


class Tail:
    """The frames appended to the old log since the snapshot, as they are
    copied to the new log and applied to its index (``index``): old byte
    ``o >= base`` lands at ``tail_at + o - base``."""

    def __init__(
        self, index: OffsetIndex, base: int, tail_at: int, mark: tuple[int, bytes] | None,
        put_bytes: int, put_frames: int,
    ) -> None:  # fmt: skip
        self.index, self.base, self.tail_at, self.mark = index, base, tail_at, mark
        self.put_bytes, self.put_frames = put_bytes, put_frames
        self.copied = base  # the old log's bytes copied so far

    @property
    def covered(self) -> int:
        """The new log's bytes the index covers."""
        return self.tail_at + self.copied - self.base

    def take(self, fd: int, end: int, out: BinaryIO) -> None:
        """Copy and index the old log's frames up to ``end`` (a frame boundary)."""
        want = 1 << 20
        while self.copied < end:
            data = os.pread(fd, min(end - self.copied, want), self.copied)
            at, used = self.covered, 0
            for start, stop, frame in picklelog.iter_frames(data, 0):
                if frame[0] == "put":
                    record = picklelog.record_of(frame)
                    self.index.put(record.session_id, at + start, record.expires_at, record.user)
                    self.put_bytes += stop - start
                    self.put_frames += 1
                elif frame[0] == "del":
                    self.index.delete(frame[1])
                self.mark = (at + start, data[start : start + picklelog.FRAME.size])
                used = stop
            if not used:  # one frame longer than the chunk
                if len(data) < picklelog.FRAME.size or want > picklelog.MAX_FRAME:
                    raise BackendError(f"cannot copy the frame at byte {self.copied}")
                want = picklelog.FRAME.size + picklelog.FRAME.unpack_from(data)[0]
                continue
            out.write(memoryview(data)[:used])
            self.copied += used
            want = 1 << 20
            time.sleep(0)  # let request threads have the GIL


def copy_live(
    index: OffsetIndex, base: int, fd: int, out: BinaryIO
) -> tuple[Base, int, tuple[int, bytes] | None]:
    """Copy the frames before ``base`` that ``index`` (frozen) points at from
    ``fd`` to ``out``, in key order: the new index (its base), the bytes
    copied, the last frame's mark.  An entry pointing at ``base`` or later
    was changed meanwhile: the frames after ``base`` bring it along."""
    hi, lo, offs, exps = index.base
    new: Base = (array("Q"), array("Q"), array("Q"), array("d"))
    pos, mark, copied = out.tell(), None, 0
    for i, offset in enumerate(offs):
        if not offset or offset >= base:
            continue
        frame = picklelog.read_raw(fd, offset)
        out.write(frame)
        new[0].append(hi[i])
        new[1].append(lo[i])
        new[2].append(pos)
        new[3].append(exps[i])
        mark = (pos, frame[: picklelog.FRAME.size])
        pos += len(frame)
        copied += len(frame)
        if not len(new[0]) % 256:
            time.sleep(0)  # let request threads have the GIL
    return new, copied, mark


def copy_range(fd: int, start: int, end: int, out: BinaryIO) -> int:
    """Copy bytes ``start`` to ``end`` of ``fd`` to ``out``; ``end``."""
    while start < end:
        chunk = os.pread(fd, min(end - start, 1 << 20), start)
        if not chunk:
            raise BackendError("the log shrank while being copied")
        out.write(chunk)
        start += len(chunk)
    return end
