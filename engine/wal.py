"""Append-only write-ahead log: every acknowledged write is here, fsynced, before the call returns.

Record layout (little-endian)::

    u32 length | u32 crc32(payload) | payload[length]
    payload = u32 header_length | header (JSON: lsn, op, fields, array specs) | raw array buffers

Log sequence numbers (``lsn``) increase by one per record. An append writes one frame and fsyncs it, so a crash can
tear only the *last* frame. Recovery therefore distinguishes:

* a torn or damaged **final** frame (no intact frame after it): never acknowledged, so it is dropped with a
  :class:`WALWarning` and the file is cut back to the last intact frame;
* damage **before** intact frames (a flipped byte, a lost sector): those later frames were acknowledged, so nothing is
  dropped silently: opening fails with :class:`WALDamaged`, naming the file, the byte offset and how many intact
  records follow, and :func:`repair` (``shoal repair``) keeps every intact record and moves the original bytes aside.

A failed append is rolled back (the file is cut back to its previous length), so a later append never lands behind
garbage.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import FailedPrecondition

_HEAD = struct.Struct("<II")
_U32 = struct.Struct("<I")
#: refuse absurd lengths outright (a damaged length field must not make us allocate gigabytes)
MAX_RECORD = 1 << 31


class WALWarning(UserWarning):
    """A torn final WAL record was found and dropped."""


class WALDamaged(FailedPrecondition):
    """Damage before intact, acknowledged records: the log is not opened until it is repaired.

    Attributes
    ----------
    path : str
    offset : int
        Byte offset of the first damaged frame.
    intact_after : int
        Intact records found after the damage.
    """

    def __init__(self, path: str, offset: int, problem: str, intact_after: int):
        super().__init__(
            f"write-ahead log {path} is damaged at byte {offset} ({problem}) and {intact_after} intact record(s) "
            f"follow the damage, so it was not opened (nothing was changed). Run `shoal repair` on the collection "
            f"(or Database.repair_collection): it keeps every intact record and moves the original file aside as "
            f"{os.path.basename(path)}.damaged-<time>, deleting nothing.")
        self.path = path
        self.offset = offset
        self.intact_after = intact_after


@dataclass
class Record:
    """One logged operation."""

    lsn: int
    op: str
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def encode_record(lsn: int, op: str, fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise one record, framing included."""
    specs, bufs = [], []
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype == object:
            raise TypeError(f"WAL array {name!r} has dtype object")
        specs.append([name, arr.dtype.str, list(arr.shape)])
        bufs.append(arr.tobytes())
    header = json.dumps({"lsn": int(lsn), "op": op, "fields": fields, "arrays": specs},
                        separators=(",", ":"), allow_nan=True).encode()
    payload = b"".join([_U32.pack(len(header)), header, *bufs])
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def decode_payload(payload: bytes) -> Record:
    """Inverse of the payload part of :func:`encode_record`; raises ``ValueError`` on anything malformed."""
    if len(payload) < 4:
        raise ValueError("payload too short")
    (hlen,) = _U32.unpack_from(payload, 0)
    if 4 + hlen > len(payload):
        raise ValueError("header overruns payload")
    head = json.loads(payload[4:4 + hlen])
    pos = 4 + hlen
    arrays = {}
    for name, dtype, shape in head["arrays"]:
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * dt.itemsize
        if pos + nbytes > len(payload):
            raise ValueError("array overruns payload")
        arrays[name] = np.frombuffer(payload, dtype=dt, count=count, offset=pos).reshape(shape).copy()
        pos += nbytes
    if pos != len(payload):
        raise ValueError("trailing bytes in payload")
    return Record(int(head["lsn"]), str(head["op"]), dict(head["fields"]), arrays)


def scan(data: bytes, after_lsn: int | None = None) -> tuple[list[Record], int, str | None]:
    """Parse records from the start of ``data``.

    Parameters
    ----------
    data : bytes
        The whole log file.
    after_lsn : int or None
        LSN already covered by a snapshot. Records at or below it are skipped (a crash between writing a snapshot
        and truncating the log leaves them behind); the first record kept must be ``after_lsn + 1``.

    Returns
    -------
    records : list of Record (lsn > after_lsn)
    good_end : int
        Offset just past the last intact record.
    problem : str or None
        Why reading stopped before the end of ``data``.
    """
    records: list[Record] = []
    pos, prev = 0, None
    n = len(data)
    while pos < n:
        if n - pos < _HEAD.size:
            return records, pos, f"torn record header at byte {pos}"
        length, crc = _HEAD.unpack_from(data, pos)
        if length > MAX_RECORD or pos + _HEAD.size + length > n:
            return records, pos, f"record at byte {pos} claims {length} bytes, past the end of the log"
        payload = data[pos + _HEAD.size:pos + _HEAD.size + length]
        if zlib.crc32(payload) != crc:
            return records, pos, f"checksum mismatch in record at byte {pos}"
        try:
            rec = decode_payload(payload)
        except (ValueError, KeyError, TypeError) as exc:
            return records, pos, f"undecodable record at byte {pos} ({exc})"
        if prev is not None and rec.lsn != prev + 1:
            return records, pos, f"record at byte {pos} has lsn {rec.lsn}, expected {prev + 1}"
        if prev is None and after_lsn is not None and rec.lsn > after_lsn + 1:
            return records, pos, f"record at byte {pos} has lsn {rec.lsn}, expected {after_lsn + 1}"
        prev = rec.lsn
        if after_lsn is None or rec.lsn > after_lsn:
            records.append(rec)
        pos += _HEAD.size + length
    return records, pos, None


def _frame_at(data: bytes, pos: int) -> tuple[Record, int] | None:
    """The intact record whose frame starts at ``pos`` and its end offset, or ``None``."""
    n = len(data)
    if n - pos < _HEAD.size:
        return None
    length, crc = _HEAD.unpack_from(data, pos)
    end = pos + _HEAD.size + length
    if length < 4 or length > MAX_RECORD or end > n:
        return None
    payload = data[pos + _HEAD.size:end]
    if zlib.crc32(payload) != crc:
        return None
    try:
        return decode_payload(payload), end
    except (ValueError, KeyError, TypeError):
        return None


def intact_frames(data: bytes, start: int) -> list[tuple[int, int, Record]]:
    """Every intact frame at or after ``start``, as ``(offset, end, record)``: frames are followed end to end, and past
    damage the next intact frame is found by trying each later offset (a frame must pass its CRC-32 and decode, so
    a false match in damaged bytes is vanishingly unlikely)."""
    out = []
    pos, n = start, len(data)
    while pos < n:
        hit = _frame_at(data, pos)
        if hit is None:
            pos += 1
            continue
        out.append((pos, hit[1], hit[0]))
        pos = hit[1]
    return out


class WriteAheadLog:
    """The log file of one collection.

    Parameters
    ----------
    path : str
        Log file; created if missing.
    read_only : bool
        Never write or truncate (a damaged tail is still skipped, with a warning).
    """

    def __init__(self, path: str, *, read_only: bool = False):
        self.path = path
        self.read_only = read_only
        self.last_lsn = 0
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        #: bytes of the file the last recover() read (a read-only reader compares it with the file to see appends)
        self.read_bytes = 0
        if not read_only:
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, exist_ok=True)
            existed = os.path.exists(path)
            # no lock of its own: the collection's owner lock (engine/locks.py) guarantees one writer process
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            if not existed:
                from ..storage import fsync_dir

                fsync_dir(directory)
            self._size = os.fstat(self._fd).st_size

    def recover(self, after_lsn: int) -> list[Record]:
        """Return the intact records with ``lsn > after_lsn``.

        A torn final frame is dropped with a :class:`WALWarning` (and truncated unless read-only); damage followed by
        intact frames raises :class:`WALDamaged` and changes nothing.
        """
        data = _read(self.path)
        self.read_bytes = len(data)
        records, good_end, problem = scan(data, after_lsn)
        if problem is not None:
            # an intact frame can stop the scan too (an lsn out of sequence): it counts as following the damage
            following = intact_frames(data, good_end if _frame_at(data, good_end) else good_end + 1)
            if following:
                raise WALDamaged(self.path, good_end, problem, len(following))
            dropped = len(data) - good_end
            action = "ignored (read-only: a writer may be appending it right now)" if self.read_only else "truncated"
            warnings.warn(f"write-ahead log {self.path}: {problem}; {dropped} torn trailing bytes {action} (the "
                          f"last write was never acknowledged). Recovered {len(records)} record(s) after lsn "
                          f"{after_lsn}.", WALWarning, stacklevel=3)
            if not self.read_only:
                os.ftruncate(self._fd, good_end)
                os.fsync(self._fd)
                self._size = good_end
        self.last_lsn = records[-1].lsn if records else after_lsn
        return records

    def append(self, op: str, fields: dict[str, Any] | None = None,
               arrays: dict[str, np.ndarray] | None = None) -> int:
        """Append one record and fsync it; returns its lsn."""
        if self.read_only or self._fd is None:
            raise FailedPrecondition(f"write-ahead log {self.path} is read-only or closed")
        with self._lock:
            lsn = self.last_lsn + 1
            buf = encode_record(lsn, op, fields or {}, arrays or {})
            try:
                view = memoryview(buf)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                os.fsync(self._fd)
            except BaseException:
                # roll back a partial append so the next record does not land behind garbage
                try:
                    os.ftruncate(self._fd, self._size)
                except OSError:
                    pass
                raise
            self._size += len(buf)
            self.last_lsn = lsn
            return lsn

    def reset(self, lsn: int) -> None:
        """Empty the log after a snapshot that covers every record up to ``lsn``."""
        if self.read_only or self._fd is None:
            return
        with self._lock:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
            self._size = 0
            self.last_lsn = max(self.last_lsn, lsn)

    @property
    def size(self) -> int:
        """Bytes in the log."""
        if self._fd is None:
            try:
                return os.path.getsize(self.path)
            except OSError:
                return 0
        return self._size

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def repair(path: str, after_lsn: int) -> dict[str, Any]:
    """Rewrite a damaged log with every intact record, moving the original bytes aside first.

    The original file is copied to ``<path>.damaged-<unix time>`` (fsynced) before the log is replaced atomically,
    so a crash at any point leaves either the old log or the repaired one, and the damaged bytes are never deleted.
    Intact records at or below ``after_lsn`` (already in the snapshot) are left out; the rest keep their order and
    are renumbered ``after_lsn + 1, ...`` so the log replays without a gap.

    Returns
    -------
    dict
        ``kept`` (records in the new log), ``damaged_bytes`` (bytes not in any intact frame), ``moved_to`` (path of
        the original bytes, or ``None`` when the log needed no repair).
    """
    from ..storage import fsync_dir

    data = _read(path)
    records, good_end, problem = scan(data, after_lsn)
    if problem is None:
        return {"kept": len(records), "damaged_bytes": 0, "moved_to": None}
    frames = intact_frames(data, 0)
    covered = sum(end - start for start, end, _ in frames)
    kept = [r for _, _, r in frames if r.lsn > after_lsn]
    aside = f"{path}.damaged-{int(time.time())}"
    with open(aside, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    body = b"".join(encode_record(after_lsn + 1 + i, r.op, r.fields, r.arrays) for i, r in enumerate(kept))
    tmp = f"{path}.repair-tmp"
    with open(tmp, "wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return {"kept": len(kept), "damaged_bytes": len(data) - covered, "moved_to": aside}
