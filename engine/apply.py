"""Log records -> state changes: the one place where a write (live or replayed from the WAL) changes records and
tenants, and the index-level operations it implies.

Every write goes through here twice in its life: once live (after its WAL append) and again on recovery (replayed
from the WAL), so both paths are the same code. A state change returns the :class:`IndexOp` list that keeps an index
built before the write consistent with the records (removes of replaced or deleted ids, tenant grants and revokes);
the collection applies those to its live index and logs them for a build in progress, which replays them on the new
index before the swap (:func:`replay`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FailedPrecondition, NotFound
from .records import Records
from .schema import Schema
from .tenants import TenantRegistry
from .wal import Record


@dataclass(frozen=True)
class IndexOp:
    """One index-level operation: ``op`` in ``remove`` / ``grant`` / ``revoke`` / ``drop_tenant``."""

    op: str
    ids: np.ndarray
    tenant: int | None = None


# ---------------------------------------------------------------------- attribute batches in the log
def batch_to_wal(schema: Schema, batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Split a normalised batch into JSON fields (strings) and arrays (numbers) for the write-ahead log."""
    fields, arrays = {}, {}
    for name, value in batch.items():
        typ = schema.fields[name]
        if typ == "int":
            arrays[f"a.{name}.v"], arrays[f"a.{name}.p"] = value
        elif typ == "float":
            arrays[f"a.{name}.v"] = value
        else:
            fields[name] = value
    return fields, arrays


def batch_from_wal(schema: Schema, fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of :func:`batch_to_wal`."""
    batch: dict[str, Any] = {}
    for name, typ in schema.fields.items():
        if typ == "int" and f"a.{name}.v" in arrays:
            batch[name] = (arrays[f"a.{name}.v"], arrays[f"a.{name}.p"])
        elif typ == "float" and f"a.{name}.v" in arrays:
            batch[name] = arrays[f"a.{name}.v"]
        elif typ in ("keyword", "tags") and name in fields:
            batch[name] = fields[name]
    return batch


# ---------------------------------------------------------------------- state changes
def apply_upsert(records: Records, tenants: TenantRegistry, ids: np.ndarray, vectors: np.ndarray,
                 batch: dict[str, Any], names: list[list[str]] | None) -> list[IndexOp]:
    """Append new slots for ``ids`` (killing the slots they replace); ``names`` ``None`` keeps replaced tenants."""
    tids = None if names is None else [[tenants.ensure(t) for t in lst] for lst in names]
    replaced = records.append(ids, vectors, batch, tids)
    return [IndexOp("remove", np.asarray(replaced, np.int64))] if replaced else []


def apply_delete(records: Records, ids: np.ndarray) -> list[IndexOp]:
    done = records.delete(ids.tolist())
    return [IndexOp("remove", np.asarray(done, np.int64))] if done else []


def apply_tenant_op(records: Records, tenants: TenantRegistry, op: str, ids: np.ndarray, tenant: str) -> list[IndexOp]:
    """Grant or revoke ``tenant`` on the live records among ``ids``."""
    tid = tenants.ensure(tenant) if op == "grant" else tenants.ids[tenant]
    slot_of = records.slot_of
    slots = np.array([slot_of[u] for u in ids.tolist() if u in slot_of], np.int64)
    (records.grant if op == "grant" else records.revoke)(slots.tolist(), tid)
    return [IndexOp(op, records.ids[slots], tid)] if slots.size else []


def apply_drop_tenant(records: Records, tenants: TenantRegistry, tenant: str) -> list[IndexOp]:
    tid = tenants.ids[tenant]
    records.drop_tenant(tid)
    tenants.active[tid] = False
    return [IndexOp("drop_tenant", np.zeros(0, np.int64), tid)]


def apply_record(records: Records, tenants: TenantRegistry, schema: Schema, rec: Record) -> list[IndexOp]:
    """Apply one write-ahead log record."""
    if rec.op == "upsert":
        batch = batch_from_wal(schema, rec.fields.get("attrs", {}), rec.arrays)
        return apply_upsert(records, tenants, rec.arrays["ids"], rec.arrays["vectors"], batch, rec.fields.get("tenants"))
    if rec.op == "delete":
        return apply_delete(records, rec.arrays["ids"])
    if rec.op in ("grant", "revoke"):
        return apply_tenant_op(records, tenants, rec.op, rec.arrays["ids"], rec.fields["tenant"])
    if rec.op == "drop_tenant":
        return apply_drop_tenant(records, tenants, rec.fields["tenant"])
    raise FailedPrecondition(f"write-ahead log record {rec.lsn} has unknown op {rec.op!r}")


# ---------------------------------------------------------------------- index side
def replay(index, ops: list[IndexOp]) -> None:
    """Apply index-level operations to ``index``; ids the index does not hold are skipped."""
    for op in ops:
        _replay_one(index, op)


def _replay_one(index, op: IndexOp) -> None:
    ids, tid = op.ids, op.tenant
    if op.op == "remove":
        if ids.size:
            index.remove(ids)
        return
    if not getattr(index, "supports_tenants", False):
        return
    if op.op == "drop_tenant":
        try:
            index.drop_tenant(tid)
        except (KeyError, NotFound):
            pass
        return
    held = ids[np.isin(ids, index.row_ids[~index.deleted])] if ids.size else ids
    if held.size == 0:
        return
    if op.op == "grant":
        index.grant(held, tid)
        return
    try:
        index.revoke(held, tid)
    except (KeyError, NotFound):  # the index never saw this tenant on its rows: nothing to revoke
        pass
