"""RFC 6962 / RFC 9162 Merkle trees: tree heads, inclusion and consistency proofs.

A leaf is hashed as ``SHA-256(0x00 || data)`` and an interior node as
``SHA-256(0x01 || left || right)``. The Merkle Tree Hash (MTH) of ``n > 1``
leaves splits them at ``k``, the largest power of two smaller than ``n``,
and hashes the two halves' heads together (RFC 6962, section 2.1); the head
of the empty tree is ``SHA-256("")``.

Proofs are generated as RFC 6962 defines them (``PATH``, section 2.1.1, and
``PROOF``, section 2.1.2) and checked with the verification algorithms of
RFC 9162 (sections 2.1.3.2 and 2.1.4.2).

Every function that takes ``leaves`` expects leaf *hashes*, i.e. values
already passed through :func:`leaf_hash`.

Implementation note
-------------------
Everything is computed bottom-up, one level at a time: adjacent nodes are
paired and an odd last node is carried up unchanged. Element ``j`` of level
``h`` is then the MTH of leaves ``[j * 2**h, min((j + 1) * 2**h, n))``, so
the top of this construction is exactly RFC 6962's recursive MTH, and the
sibling of a node's ancestor at each level (when it has one) is exactly the
corresponding component of RFC 6962's audit path. This avoids recursion and
keeps a tree of a million leaves to about one SHA-256 call per node.

The module-level proof builders therefore cost O(n) per call. A log that
hands out many proofs keeps a :class:`MerkleLog` instead: it caches every
complete subtree head as leaves are appended (about ``2 * n`` hashes) and
builds the same proofs, for the current or any earlier tree size, with
O(log n) hashes. :class:`TreeBuilder` keeps only O(log n) state and gives
tree heads, not proofs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "MerkleLog",
    "ProofError",
    "TreeBuilder",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256

EMPTY_ROOT: bytes = _sha256(b"").digest()
"""The Merkle Tree Hash of the empty tree: ``SHA-256("")``."""


class ProofError(ValueError):
    """An inclusion or consistency proof failed to verify."""


def leaf_hash(data: bytes) -> bytes:
    """Hash a leaf's data as ``SHA-256(0x00 || data)``.

    Parameters
    ----------
    data : bytes
        The leaf's content.

    Returns
    -------
    bytes
        The 32-byte leaf hash.
    """
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash an interior node as ``SHA-256(0x01 || left || right)``.

    Parameters
    ----------
    left : bytes
        Head of the left subtree.
    right : bytes
        Head of the right subtree.

    Returns
    -------
    bytes
        The 32-byte node hash.
    """
    return _sha256(_NODE_PREFIX + left + right).digest()


def _next_level(level: list[bytes]) -> list[bytes]:
    """Pair adjacent nodes of ``level``; an odd last node is carried up unchanged."""
    sha256, prefix = _sha256, _NODE_PREFIX
    lefts, rights = level[0::2], level[1::2]  # ``lefts`` is one longer when ``level`` is odd
    parents = [sha256(prefix + a + b).digest() for a, b in zip(lefts, rights, strict=False)]
    if len(level) % 2:
        parents.append(level[-1])
    return parents


def root(leaves: Sequence[bytes]) -> bytes:
    """Compute the Merkle Tree Hash of a list of leaf hashes.

    Parameters
    ----------
    leaves : Sequence[bytes]
        Leaf hashes (outputs of :func:`leaf_hash`), in log order.

    Returns
    -------
    bytes
        The tree head, ``MTH(leaves)``; :data:`EMPTY_ROOT` for no leaves.
    """
    if not leaves:
        return EMPTY_ROOT
    level = list(leaves)
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


def _walk_up(
    leaves: Sequence[bytes], size: int, leaf: int, start: int
) -> tuple[bytes, list[bytes]]:
    """Follow leaf ``leaf`` of the tree of the first ``size`` leaves up to the root.

    Returns the ancestor of ``leaf`` at height ``start`` and the siblings of
    its ancestors at heights ``start`` and above, lowest first (heights where
    the ancestor is a carried odd node have no sibling and contribute nothing).
    """
    level = list(leaves[:size])
    position = leaf
    for _ in range(start):
        level = _next_level(level)
        position >>= 1
    node = level[position]
    siblings: list[bytes] = []
    while len(level) > 1:
        sibling = position ^ 1
        if sibling < len(level):
            siblings.append(level[sibling])
        level = _next_level(level)
        position >>= 1
    return node, siblings


def _tree_size(leaves: Sequence[bytes], size: int | None) -> int:
    """Resolve and validate a requested tree size against the available leaves."""
    if size is None:
        return len(leaves)
    if not 0 <= size <= len(leaves):
        raise ValueError(f"tree size {size} is outside 0..{len(leaves)} (the leaves available)")
    return size


def inclusion_proof(leaves: Sequence[bytes], index: int, size: int | None = None) -> list[bytes]:
    """Build the audit path ``PATH(index, D[0:size])`` of RFC 6962, section 2.1.1.

    Parameters
    ----------
    leaves : Sequence[bytes]
        Leaf hashes of the log, in order.
    index : int
        Zero-based index of the leaf to prove.
    size : int or None, optional
        Size of the tree the proof is for (its first ``size`` leaves);
        defaults to ``len(leaves)``.

    Returns
    -------
    list[bytes]
        The sibling hashes from the leaf up to the root (empty for a
        one-leaf tree).

    Raises
    ------
    ValueError
        If ``size`` is negative or exceeds ``len(leaves)``, or ``index`` is
        not in ``range(size)``.
    """
    size = _tree_size(leaves, size)
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    return _walk_up(leaves, size, index, 0)[1]


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes
) -> None:
    """Verify an inclusion proof with the algorithm of RFC 9162, section 2.1.3.2.

    The tree size is checked only as far as it shapes the proof (its length
    and which side each component hashes on); it is bound for certain by
    ``root_hash`` coming from a trusted (e.g. signed) tree head of that size.

    Parameters
    ----------
    leaf : bytes
        The leaf hash (output of :func:`leaf_hash`).
    index : int
        Zero-based index of the leaf in the tree.
    size : int
        Number of leaves in the tree.
    proof : Sequence[bytes]
        The audit path, lowest sibling first.
    root_hash : bytes
        The trusted head of the tree of ``size`` leaves.

    Raises
    ------
    ProofError
        If ``index`` is not in ``range(size)``, the proof has too many or
        too few components for this index and size, or it does not hash up
        to ``root_hash``.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ProofError(
                f"inclusion proof for leaf {index} of a tree of size {size} "
                f"has too many components ({len(proof)})"
            )
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(
            f"inclusion proof for leaf {index} of a tree of size {size} "
            f"has too few components ({len(proof)})"
        )
    if r != root_hash:
        raise ProofError(
            f"inclusion proof for leaf {index} of a tree of size {size} "
            "does not lead to the expected root hash"
        )


def consistency_proof(
    leaves: Sequence[bytes], old_size: int, new_size: int | None = None
) -> list[bytes]:
    """Build the consistency proof ``PROOF(old_size, D[0:new_size])`` of RFC 6962, section 2.1.2.

    Parameters
    ----------
    leaves : Sequence[bytes]
        Leaf hashes of the log, in order.
    old_size : int
        Size of the earlier tree.
    new_size : int or None, optional
        Size of the later tree; defaults to ``len(leaves)``.

    Returns
    -------
    list[bytes]
        The proof's node hashes; empty when ``old_size`` is 0 or equals
        ``new_size``.

    Raises
    ------
    ValueError
        If ``old_size`` is negative or larger than ``new_size``, or
        ``new_size`` exceeds ``len(leaves)``.
    """
    new_size = _tree_size(leaves, new_size)
    if not 0 <= old_size <= new_size:
        raise ValueError(f"old size {old_size} is outside 0..{new_size} (the new size)")
    if old_size in (0, new_size):
        return []
    # The old tree's last complete subtree, of height ``start``, is the node
    # the proof climbs from; when the old tree is itself complete that node is
    # the old head, which the verifier already has, so it is left out.
    start = (old_size & -old_size).bit_length() - 1
    node, siblings = _walk_up(leaves, new_size, old_size - 1, start)
    if old_size & (old_size - 1) == 0:
        return siblings
    return [node, *siblings]


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Verify a consistency proof with the algorithm of RFC 9162, section 2.1.4.2.

    Parameters
    ----------
    old_size : int
        Size of the earlier tree.
    new_size : int
        Size of the later tree.
    old_root : bytes
        The trusted head of the earlier tree.
    new_root : bytes
        The trusted head of the later tree.
    proof : Sequence[bytes]
        The consistency proof.

    Raises
    ------
    ProofError
        If the sizes are negative or out of order; the sizes are equal and
        the roots differ or the proof is not empty; ``old_size`` is 0 and the
        proof is not empty or ``old_root`` is not :data:`EMPTY_ROOT`; the
        proof has too many or too few components; or the recomputed old or
        new head differs from the one given.
    """
    if not 0 <= old_size <= new_size:
        raise ProofError(f"sizes out of order: old size {old_size}, new size {new_size}")
    if old_size == new_size:
        if proof:
            raise ProofError(
                f"consistency proof between equal sizes ({old_size}) must be empty, "
                f"got {len(proof)} components"
            )
        if old_root != new_root:
            raise ProofError(f"two different root hashes for the same tree size {old_size}")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError("root hash of the empty tree is not SHA-256 of the empty string")
        return
    if old_size == 0:
        if proof:
            raise ProofError(
                f"consistency proof from the empty tree must be empty, got {len(proof)} components"
            )
        if old_root != EMPTY_ROOT:
            raise ProofError("root hash of the empty tree is not SHA-256 of the empty string")
        return
    if not proof:
        raise ProofError(f"consistency proof from size {old_size} to {new_size} is empty")

    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(
                f"consistency proof from size {old_size} to {new_size} "
                f"has too many components ({len(proof)})"
            )
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(
            f"consistency proof from size {old_size} to {new_size} "
            f"has too few components ({len(proof)})"
        )
    if fr != old_root:
        raise ProofError(
            f"consistency proof does not lead to the expected root hash of size {old_size}"
        )
    if sr != new_root:
        raise ProofError(
            f"consistency proof does not lead to the expected root hash of size {new_size}"
        )


class TreeBuilder:
    """Incremental tree head over appended leaf hashes, in O(log n) memory.

    Only the heads of the complete subtrees that make up the tree so far are
    kept (one per set bit of the size, largest first: the "compact range" of
    ``[0, size)``), so :meth:`root` equals :func:`root` over all the leaves
    appended without storing them.
    """

    def __init__(self) -> None:
        self._size = 0
        self._frontier: list[bytes] = []

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf_hash: bytes) -> int:
        """Append one leaf hash.

        Parameters
        ----------
        leaf_hash : bytes
            The new leaf's hash (output of :func:`leaf_hash`).

        Returns
        -------
        int
            The tree size after the append.
        """
        node = leaf_hash
        merged = self._size
        while merged & 1:  # each trailing one bit is a complete left sibling
            node = node_hash(self._frontier.pop(), node)
            merged >>= 1
        self._frontier.append(node)
        self._size += 1
        return self._size

    def root(self) -> bytes:
        """Compute the head of the tree of all leaves appended so far.

        Returns
        -------
        bytes
            The Merkle Tree Hash; :data:`EMPTY_ROOT` if nothing was appended.
        """
        if not self._frontier:
            return EMPTY_ROOT
        head = self._frontier[-1]
        for left in reversed(self._frontier[:-1]):
            head = node_hash(left, head)
        return head


class MerkleLog:
    """Append-only tree that keeps every complete subtree head, for O(log n) proofs.

    Level ``h`` holds the head of every *complete* subtree of height ``h``
    seen so far: element ``j`` is the MTH of leaves ``[j * 2**h, (j + 1) *
    2**h)`` (level 0 is the leaves themselves). An append adds the leaf and
    the heads of the subtrees it completes, one per trailing one bit of the
    old size, so appends cost one node hash amortised and the log holds
    about ``2 * n`` hashes. Nothing is ever recomputed or invalidated: the
    complete subtrees of a smaller tree are complete subtrees of every later
    one.

    Any range that RFC 6962's recursion visits starts at a multiple of the
    smallest power of two not below its length (the left part of a split is
    ``k`` long and starts at a multiple of ``2 * k``; the right part is at
    most ``k`` long and starts at a multiple of ``k``). Its binary
    decomposition, largest piece first, is therefore made of cached
    complete subtrees, and its MTH is their heads folded from the right,
    which is exactly the split at the largest power of two smaller than the
    length, applied repeatedly. So :meth:`root`, :meth:`inclusion_proof`
    and :meth:`consistency_proof` return exactly what :func:`root`,
    :func:`inclusion_proof` and :func:`consistency_proof` return over the
    leaves appended, for any tree size up to :attr:`size`, each with
    O(log n) hashes.
    """

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        self.extend(leaves)

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return len(self._levels[0])

    def __len__(self) -> int:
        return len(self._levels[0])

    @property
    def leaves(self) -> Sequence[bytes]:
        """The leaf hashes appended so far, in order (a live view: do not modify it)."""
        return self._levels[0]

    def append(self, leaf_hash: bytes) -> int:
        """Append one leaf hash and the heads of the subtrees it completes.

        Parameters
        ----------
        leaf_hash : bytes
            The new leaf's hash (output of :func:`leaf_hash`).

        Returns
        -------
        int
            The tree size after the append.
        """
        levels = self._levels
        level = levels[0]
        level.append(leaf_hash)
        size = len(level)
        node, height = leaf_hash, 0
        while not (size >> height) & 1:  # each trailing zero bit completes a subtree
            node = _sha256(_NODE_PREFIX + level[-2] + node).digest()
            height += 1
            if height == len(levels):
                levels.append([])
            level = levels[height]
            level.append(node)
        return size

    def extend(self, leaves: Iterable[bytes]) -> int:
        """Append leaf hashes in order.

        Parameters
        ----------
        leaves : Iterable[bytes]
            Leaf hashes (outputs of :func:`leaf_hash`).

        Returns
        -------
        int
            The tree size after the appends.
        """
        for leaf in leaves:
            self.append(leaf)
        return self.size

    def _size(self, size: int | None) -> int:
        """Resolve and validate a requested tree size against the leaves appended."""
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} is outside 0..{self.size} (the leaves appended)")
        return size

    def _head(self, start: int, end: int) -> bytes:
        """MTH of leaves ``[start, end)``, a non-empty range RFC 6962's recursion visits.

        ``start`` must be a multiple of every power of two in ``end - start``
        (true of every such range, see the class notes), so each piece of the
        binary decomposition is a cached complete subtree.
        """
        levels = self._levels
        heads = []
        count = end - start
        for height in range(count.bit_length() - 1, -1, -1):
            if count >> height & 1:
                heads.append(levels[height][start >> height])
                start += 1 << height
        head = heads.pop()
        while heads:
            head = _sha256(_NODE_PREFIX + heads.pop() + head).digest()
        return head

    def root(self, size: int | None = None) -> bytes:
        """Compute the head of the tree of the first ``size`` leaves.

        Parameters
        ----------
        size : int or None, optional
            Tree size; defaults to all the leaves appended.

        Returns
        -------
        bytes
            The Merkle Tree Hash; :data:`EMPTY_ROOT` for size 0.

        Raises
        ------
        ValueError
            If ``size`` is negative or exceeds :attr:`size`.
        """
        size = self._size(size)
        return self._head(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Build the audit path ``PATH(index, D[0:size])`` of RFC 6962, section 2.1.1.

        Same result as :func:`inclusion_proof` over the leaves appended.

        Parameters
        ----------
        index : int
            Zero-based index of the leaf to prove.
        size : int or None, optional
            Size of the tree the proof is for (its first ``size`` leaves);
            defaults to all the leaves appended.

        Returns
        -------
        list[bytes]
            The sibling hashes from the leaf up to the root (empty for a
            one-leaf tree).

        Raises
        ------
        ValueError
            If ``size`` is negative or exceeds :attr:`size`, or ``index`` is
            not in ``range(size)``.
        """
        size = self._size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf index {index} is not in a tree of size {size}")
        # Walk RFC 6962's recursion from the root down, collecting the
        # siblings top first. Only a right part can be incomplete, and once
        # the walk turns left it is inside a complete subtree, so at most one
        # sibling costs more than a lookup.
        path: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            split = start + (1 << ((end - start - 1).bit_length() - 1))
            if index < split:
                path.append(self._head(split, end))
                end = split
            else:
                path.append(self._head(start, split))
                start = split
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Build the consistency proof ``PROOF(old_size, D[0:new_size])``, RFC 6962 section 2.1.2.

        Same result as :func:`consistency_proof` over the leaves appended.

        Parameters
        ----------
        old_size : int
            Size of the earlier tree.
        new_size : int or None, optional
            Size of the later tree; defaults to all the leaves appended.

        Returns
        -------
        list[bytes]
            The proof's node hashes; empty when ``old_size`` is 0 or equals
            ``new_size``.

        Raises
        ------
        ValueError
            If ``old_size`` is negative or larger than ``new_size``, or
            ``new_size`` exceeds :attr:`size`.
        """
        new_size = self._size(new_size)
        if not 0 <= old_size <= new_size:
            raise ValueError(f"old size {old_size} is outside 0..{new_size} (the new size)")
        if old_size in (0, new_size):
            return []
        # SUBPROOF(m, D[start:end], whole) walked from the root down; ``whole``
        # stays true while the old tree is a prefix that is a node of its own
        # (the verifier holds its head, so it is not sent).
        proof: list[bytes] = []
        start, end, whole = 0, new_size, True
        while old_size != end:
            split = start + (1 << ((end - start - 1).bit_length() - 1))
            if old_size <= split:
                proof.append(self._head(split, end))
                end = split
            else:
                proof.append(self._head(start, split))
                start, whole = split, False
        if not whole:
            proof.append(self._head(start, end))
        proof.reverse()
        return proof
