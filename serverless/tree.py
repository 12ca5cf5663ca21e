"""The fan-out tree: a coordinator, ``b + b^2 + ... + b^L`` allocators in pre-order, partitions spread over them.

Node 0 is the coordinator (depth 0). Every node at depth ``l < L`` has ``b`` children at depth ``l + 1``; ids are
assigned in pre-order, so a node's subtree is the contiguous id range ``[id, id + subtree_size(depth))`` and a node
can compute its children and its share of the partitions from ``(id, b, L)`` alone, with no table in the payload.

Work is split in one of two ways. ``split="partitions"`` (the default): partitions go to allocators round-robin in id
order (partition ``p`` to allocator ``1 + p % A``), so every allocator owns ``floor(P/A)`` or ``ceil(P/A)`` of them
and routes the whole batch, and each partition is processed once per batch. ``split="queries"`` (SQUASH's way): the
batch is cut into ``A`` contiguous slices in id order, each allocator routes only its slice and invokes processors for
every partition its queries visit, so level 0 runs in parallel but a partition may be processed once per slice. With
``L = 0`` there are no allocators and the coordinator does everything.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidArgument

#: refuse trees whose allocator count would be absurd for a Lambda account (the default concurrency is 1,000)
MAX_ALLOCATORS = 10_000


@dataclass(frozen=True)
class Tree:
    """Shape of the invocation tree.

    Parameters
    ----------
    b : int
        Branching factor (children per node), >= 1.
    L : int
        Depth (allocator levels below the coordinator), >= 0.
    """

    b: int
    L: int

    def __post_init__(self):
        for name, v, lo in (("b", self.b, 1), ("L", self.L, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InvalidArgument(f"tree setting {name} must be an integer >= {lo}, got {v!r}")
        if self.n_allocators > MAX_ALLOCATORS:
            raise InvalidArgument(f"tree b={self.b}, L={self.L} has {self.n_allocators} allocators "
                                  f"(limit {MAX_ALLOCATORS})")

    @property
    def n_allocators(self) -> int:
        """``b + b^2 + ... + b^L``."""
        return sum(self.b ** j for j in range(1, self.L + 1))

    @property
    def n_nodes(self) -> int:
        """Coordinator plus allocators."""
        return 1 + self.n_allocators

    def subtree_size(self, depth: int) -> int:
        """Number of nodes in the subtree of a node at ``depth`` (itself included)."""
        return sum(self.b ** j for j in range(0, self.L - depth + 1))

    def depth_of(self, node: int) -> int:
        """Depth of ``node`` (0 for the coordinator), found by walking down from the root."""
        self._check(node)
        cur, depth = 0, 0
        while cur != node:
            size = self.subtree_size(depth + 1)
            idx = (node - cur - 1) // size
            cur = cur + 1 + idx * size
            depth += 1
        return depth

    def children(self, node: int) -> list[int]:
        """Pre-order ids of ``node``'s children (empty for a leaf)."""
        depth = self.depth_of(node)
        if depth >= self.L:
            return []
        size = self.subtree_size(depth + 1)
        return [node + 1 + i * size for i in range(self.b)]

    def subtree(self, node: int) -> range:
        """Ids of ``node``'s subtree, itself included."""
        return range(node, node + self.subtree_size(self.depth_of(node)))

    def owner(self, partition: int) -> int:
        """Node that processes ``partition``."""
        a = self.n_allocators
        return 0 if a == 0 else 1 + partition % a

    def share(self, node: int, n_partitions: int) -> list[int]:
        """Partitions owned by ``node`` itself."""
        self._check(node)
        a = self.n_allocators
        if a == 0:
            return list(range(n_partitions)) if node == 0 else []
        if node == 0:
            return []
        return list(range(node - 1, n_partitions, a))

    def subtree_partitions(self, node: int, n_partitions: int) -> list[int]:
        """Partitions owned anywhere in ``node``'s subtree, ascending."""
        ids = self.subtree(node)
        return sorted(p for p in range(n_partitions) if self.owner(p) in ids)

    def query_bounds(self, nq: int) -> list[int]:
        """Boundaries of the allocators' query slices (``split="queries"``): allocator ``j`` (1..A) owns batch rows
        ``[bounds[j-1], bounds[j])``; slices are contiguous and balanced, so a subtree's rows are contiguous too."""
        a = self.n_allocators
        return [i * nq // a for i in range(a + 1)] if a else [0, nq]

    def query_range(self, node: int, nq: int) -> tuple[int, int]:
        """Batch rows ``[lo, hi)`` that ``node`` itself routes in ``split="queries"`` mode."""
        self._check(node)
        bounds = self.query_bounds(nq)
        if self.n_allocators == 0:
            return (0, nq) if node == 0 else (0, 0)
        if node == 0:
            return 0, 0
        return bounds[node - 1], bounds[node]

    def subtree_query_range(self, node: int, nq: int) -> tuple[int, int]:
        """Batch rows ``[lo, hi)`` routed anywhere in ``node``'s subtree (``split="queries"``)."""
        ids = self.subtree(node)
        if self.n_allocators == 0 or node == 0:
            return 0, nq
        bounds = self.query_bounds(nq)
        return bounds[ids.start - 1], bounds[ids.stop - 1]

    def _check(self, node: int) -> None:
        if isinstance(node, bool) or not isinstance(node, int) or not 0 <= node < self.n_nodes:
            raise InvalidArgument(f"node id {node!r} is outside the tree (0..{self.n_nodes - 1})")
