"""The pickle backend's file format: frames, and what may be cut after a crash.

A session file is a log of frames, each ``length (4 bytes, big-endian) +
CRC-32 of the body (4 bytes) + body``, the body a pickle (protocol 5) of a
plain tuple:

* ``("sessionstore.pickle", 1)``: the header, always the first frame;
* ``("origin", lineage, generation)``: right after the header of every file
  we write: a random token given when the store is first created, kept by
  each compaction, which adds one to ``generation``.  A process that sees the
  inode change to a file of another lineage, or of a generation not above the
  one it knew (a backup put back), logs that the file was replaced;
* ``("put", id, version, created_at, accessed_at, expires_at, payload)``, with
  an eighth field, the user, for a session bound to one;
* ``("del", id)``.

Bodies only ever hold str, int, float and bytes and are read with an
unpickler that refuses every global, so a planted frame cannot run code.

Invariants (each proved by the test named beside it, in
``tests/test_durability.py`` and ``tests/test_pickle_damage.py``):

* A crash can only leave a **torn final append**: one frame cut short at the
  end of the file, or (power loss without fsync) a run of zero bytes there.
  :func:`classify_tail` recognises exactly these: a partial frame whose length
  field is plausible (<= :data:`MAX_FRAME`), whose body starts like a pickle,
  that runs to the end of the file, and inside which no other valid frame
  starts (``test_torn_last_frame_*``, ``test_zero_tail_*``).
* Anything else (a bad CRC with frames after it, a length field pointing past
  the end while valid frames follow, an unreadable body) is **damage**: the
  file is never cut or overwritten (``test_damaged_length_field_*``,
  ``test_damaged_middle_frame_*``).
* :func:`salvage` replays every frame it can read, re-synchronising after a
  damaged stretch on the next frame whose CRC and body check out; it never
  writes to the file it reads (``test_salvage_*``).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import struct
import zlib
from collections.abc import Iterator
from typing import Any

from .base import Record, checked_record

HEADER = ("sessionstore.pickle", 1)
FRAME = struct.Struct(">II")
PROTOCOL = 5
#: The longest frame ever written (a session is far smaller): a length field
#: above this is damage, not a torn write.
MAX_FRAME = 64 << 20
_PICKLE_START = b"\x80\x05"
_READ_AHEAD = 4096


class FrameUnpickler(pickle.Unpickler):
    """Frames hold only tuples of str, int, float and bytes: no globals at all."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


class Damaged(Exception):
    """A damaged stretch of a session file, at byte ``offset``."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"damaged at byte {offset}: {reason}")
        self.offset = offset
        self.reason = reason


def encode(frame: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(frame, PROTOCOL)
    return FRAME.pack(len(body), zlib.crc32(body)) + body


def encode_put(r: Record) -> bytes:
    frame = ("put", r.session_id, r.version, r.created_at, r.accessed_at, r.expires_at, r.payload)
    # encode(), inline: every write makes one.
    body = pickle.dumps(frame if r.user is None else (*frame, r.user), PROTOCOL)
    return FRAME.pack(len(body), zlib.crc32(body)) + body


def decode(body: bytes) -> tuple[Any, ...]:
    frame = FrameUnpickler(io.BytesIO(body)).load()
    if not isinstance(frame, tuple) or not frame or not isinstance(frame[0], str):
        raise ValueError("a frame is not a tuple")
    return frame


def record_of(frame: tuple[Any, ...]) -> Record:
    """The record of a ``put`` frame, every field type-checked."""
    if len(frame) == 8:
        return checked_record(*frame[1:])  # bound to a user
    if len(frame) != 7:
        raise ValueError("a put frame has 7 or 8 fields")
    _, sid, version, created, accessed, expires, payload = frame
    # The usual case checked in one expression (a million of them at open):
    # x - x is 0.0 for a finite float only.
    if (
        type(sid) is str
        and type(version) is int
        and version >= 1
        and type(created) is float
        and type(accessed) is float
        and type(expires) is float
        and type(payload) is bytes
        and created - created + accessed - accessed + expires - expires == 0.0
    ):
        return Record(sid, version, created, accessed, expires, payload)
    return checked_record(*frame[1:])  # converts, or names what is wrong


def read_raw(fd: int, offset: int) -> bytes:
    """The whole frame starting at byte ``offset`` of the file ``fd``, its
    length and CRC checked; :class:`Damaged` if it is not whole and sound.
    One ``pread`` for a frame of up to 4 KB."""
    head = os.pread(fd, _READ_AHEAD, offset)
    if len(head) < FRAME.size:
        raise Damaged(offset, "a frame header cut short")
    length, crc = FRAME.unpack_from(head)
    if length > MAX_FRAME:
        raise Damaged(offset, f"implausible frame length {length}")
    size = FRAME.size + length
    if len(head) < size and len(head) == _READ_AHEAD:
        head += os.pread(fd, size - len(head), offset + _READ_AHEAD)
    if len(head) < size:
        raise Damaged(offset, "a frame cut short")
    if zlib.crc32(memoryview(head)[FRAME.size : size]) != crc:
        raise Damaged(offset, "checksum mismatch")
    return head[:size]


def read_frame(fd: int, offset: int) -> tuple[Any, ...]:
    """The frame starting at byte ``offset``, checked (see :func:`read_raw`)."""
    raw = read_raw(fd, offset)
    try:
        return decode(raw[FRAME.size :])
    except Exception as exc:
        raise Damaged(offset, f"unreadable frame ({exc})") from exc


def header_size(data: bytes) -> int | None:
    """The size of the header frame at the start of ``data``, or None."""
    if len(data) < FRAME.size:
        return None
    length, crc = FRAME.unpack_from(data)
    body = data[FRAME.size : FRAME.size + length]
    if len(body) != length or zlib.crc32(body) != crc:
        return None
    try:
        return FRAME.size + length if decode(body) == HEADER else None
    except Exception:
        return None


def frame_at(data: bytes, pos: int) -> tuple[int, tuple[Any, ...]] | None:
    """``(end, frame)`` when a whole, valid frame starts at ``pos``; else None."""
    if len(data) - pos < FRAME.size:
        return None
    length, crc = FRAME.unpack_from(data, pos)
    end = pos + FRAME.size + length
    if length > MAX_FRAME or end > len(data):
        return None
    body = data[pos + FRAME.size : end]
    if zlib.crc32(body) != crc:
        return None
    try:
        return end, decode(body)
    except Exception:
        return None


def next_frame(data: bytes, start: int) -> int | None:
    """Where the next valid frame starting at or after ``start`` begins, or None."""
    find = start + FRAME.size
    while True:
        hit = data.find(_PICKLE_START, find)
        if hit < 0:
            return None
        if frame_at(data, hit - FRAME.size) is not None:
            return hit - FRAME.size
        find = hit + 1


def classify_tail(data: bytes, pos: int) -> str | None:
    """What stops a reader at ``pos``: ``"torn"`` (an unfinished final append),
    ``"zeros"`` (zero bytes a power cut left), or None (damage)."""
    tail = memoryview(data)[pos:]
    if not tail.tobytes().strip(b"\0"):
        return "zeros"
    if len(tail) >= FRAME.size:
        length, crc = FRAME.unpack_from(data, pos)
        end = pos + FRAME.size + length
        if length > MAX_FRAME or end <= len(data):
            # Every byte the frame announces is there: whatever its checksum
            # says, an append did finish, so it is damage, never a torn write.
            return None
        start = bytes(tail[FRAME.size : FRAME.size + 2])
        if not _PICKLE_START.startswith(start):
            return None
    return None if next_frame(data, pos + 1) is not None else "torn"


def salvage(data: bytes) -> tuple[dict[str, Record], list[Damaged]]:
    """Every record readable in the file contents ``data`` (frames replayed in
    order, damaged stretches skipped), and the damage found.  A torn final
    append is not damage.

    A damaged stretch may have held a later change or the deletion of a
    session read before it: replaying what is left would bring back an old
    version, or a session its user logged out of.  So a record whose id
    appears in the bytes of a damaged stretch after its last readable frame
    is left out, and named among the damage (``test_salvage_*``).  (Damage
    that also destroyed the id's bytes cannot be told apart.)"""
    records: dict[str, Record] = {}
    last: dict[str, int] = {}  # where each id's last readable frame starts
    stretches: list[tuple[int, bytes]] = []
    problems: list[Damaged] = []
    pos = header_size(data)
    if pos is None:
        problems.append(Damaged(0, "not a sessionstore pickle file (bad header)"))
        pos = next_frame(data, 0)
    while pos is not None and pos < len(data):
        found = frame_at(data, pos)
        if found is None:
            if classify_tail(data, pos) is not None:
                break
            problems.append(Damaged(pos, _why(data, pos)))
            resume = next_frame(data, pos + 1)
            stretches.append((pos, data[pos:resume]))
            pos = resume
            continue
        end, frame = found
        try:
            apply_frame(records, frame)
            if frame[0] in ("put", "del"):
                last[frame[1]] = pos
        except Exception as exc:
            problems.append(Damaged(pos, f"unreadable frame ({exc})"))
        pos = end
    for start, raw in stretches:
        for session_id in _texts(raw):
            if session_id not in records or last[session_id] > start:
                continue
            del records[session_id]
            problems.append(
                Damaged(
                    start,
                    f"session {session_id} left out: the damaged frame names it "
                    f"after its last readable one (a change or delete there is lost)",
                )
            )
    return records, problems


def _texts(raw: bytes) -> set[str]:
    """The short strings a stretch of pickles holds, as far as they can be
    read (the ids among them): after each SHORT_BINUNICODE opcode."""
    found = set()
    at = raw.find(b"\x8c")
    while at >= 0:
        text = raw[at + 2 : at + 2 + raw[at + 1]] if at + 1 < len(raw) else b""
        with contextlib.suppress(UnicodeDecodeError):
            found.add(text.decode())
        at = raw.find(b"\x8c", at + 1)
    return found


def apply_frame(records: dict[str, Record], frame: tuple[Any, ...]) -> None:
    kind = frame[0]
    if kind == "put":
        record = record_of(frame)
        records[record.session_id] = record
    elif kind == "del" and len(frame) == 2 and isinstance(frame[1], str):
        records.pop(frame[1], None)
    elif kind != "origin":
        raise ValueError(f"unknown frame kind {kind!r:.40}")


def iter_frames(data: bytes, pos: int) -> Iterator[tuple[int, int, tuple[Any, ...]]]:
    """``(start, end, frame)`` for each whole frame from ``pos``, stopping at a
    torn tail; :class:`Damaged` at anything else."""
    while pos < len(data):
        found = frame_at(data, pos)
        if found is None:
            if classify_tail(data, pos) is not None:
                return
            raise Damaged(pos, _why(data, pos))
        end, frame = found
        yield pos, end, frame
        pos = end


def _why(data: bytes, pos: int) -> str:
    if len(data) - pos < FRAME.size:
        return "a frame header cut short"
    length, crc = FRAME.unpack_from(data, pos)
    if length > MAX_FRAME or pos + FRAME.size + length > len(data):
        return f"implausible frame length {length}"
    body = data[pos + FRAME.size : pos + FRAME.size + length]
    if zlib.crc32(body) != crc:
        return "checksum mismatch"
    try:
        decode(body)
    except Exception as exc:
        return f"unreadable frame ({exc})"
    return "bad frame"


def lineage_of(head: bytes) -> tuple[str, int] | None:
    """The (token, generation) in the origin frame at the start of a log."""
    start = header_size(head)
    found = None if start is None else frame_at(head, start)
    if found is None or found[1][0] != "origin" or len(found[1]) not in (3, 4):
        return None
    return str(found[1][1]), int(found[1][2])
