"""An append-only RFC 6962 Merkle log that hands out roots and proofs in O(log n).

The verifiers and the hashing rules are :mod:`common.merkle`'s; this is the
builder a log operator keeps (the ledger's :class:`ledger.tree_heads.LedgerTree`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from common.merkle import EMPTY_ROOT, NODE_PREFIX

__all__ = ["MerkleLog"]

_NODE_PREFIX = NODE_PREFIX
_sha256 = hashlib.sha256  # inlined node hashes: appends are the hot path


class MerkleLog:
    """Append-only tree that keeps every complete subtree's root, for O(log n) proofs.

    Level ``h`` holds the root of every *complete* subtree of height ``h``
    seen so far: element ``j`` is the MTH of leaves ``[j * 2**h, (j + 1) *
    2**h)`` (level 0 is the leaves themselves). An append adds the leaf and
    the roots of the subtrees it completes, one per trailing one bit of the
    old size, so appends cost one node hash amortised and the log holds
    about ``2 * n`` hashes. Nothing is ever recomputed or invalidated: the
    complete subtrees of a smaller tree are complete subtrees of every later
    one.

    Any range that RFC 6962's recursion visits starts at a multiple of the
    smallest power of two not below its length (the left part of a split is
    ``k`` long and starts at a multiple of ``2 * k``; the right part is at
    most ``k`` long and starts at a multiple of ``k``). Its binary
    decomposition, largest piece first, is therefore made of cached
    complete subtrees, and its MTH is their roots folded from the right,
    which is exactly the split at the largest power of two smaller than the
    length, applied repeatedly. So :meth:`root`, :meth:`inclusion_proof`
    and :meth:`consistency_proof` return exactly what RFC 6962's MTH, PATH
    and PROOF return over the leaves appended, for any tree size up to
    :attr:`size`, each with O(log n) hashes.
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
        """Append one leaf hash and the roots of the subtrees it completes.

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

    def _subtree_root(self, start: int, end: int) -> bytes:
        """MTH of leaves ``[start, end)``, a non-empty range RFC 6962's recursion visits.

        ``start`` must be a multiple of every power of two in ``end - start``
        (true of every such range, see the class notes), so each piece of the
        binary decomposition is a cached complete subtree.
        """
        levels = self._levels
        roots = []
        count = end - start
        for height in range(count.bit_length() - 1, -1, -1):
            if count >> height & 1:
                roots.append(levels[height][start >> height])
                start += 1 << height
        root = roots.pop()
        while roots:
            root = _sha256(_NODE_PREFIX + roots.pop() + root).digest()
        return root

    def root(self, size: int | None = None) -> bytes:
        """Compute the root of the tree of the first ``size`` leaves.

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
        return self._subtree_root(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Build the audit path ``PATH(index, D[0:size])`` of RFC 6962, section 2.1.1.

        RFC 6962's PATH over the leaves appended.

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
                path.append(self._subtree_root(split, end))
                end = split
            else:
                path.append(self._subtree_root(start, split))
                start = split
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Build the consistency proof ``PROOF(old_size, D[0:new_size])``, RFC 6962 section 2.1.2.

        RFC 6962's PROOF over the leaves appended.

        Parameters
        ----------
        old_size : int
            Size of the earlier tree.
        new_size : int or None, optional
            Size of the later tree; defaults to all the leaves appended.

        Returns
        -------
        list[bytes]
            The proof's node hashes; empty when ``old_size`` equals ``new_size``.

        Raises
        ------
        ValueError
            If ``old_size`` is not in ``1..new_size`` (RFC 6962 defines no
            proof from the empty tree, so none is generated), or ``new_size``
            exceeds :attr:`size`.
        """
        new_size = self._size(new_size)
        if not 1 <= old_size <= new_size:
            raise ValueError(
                f"old size {old_size} is outside 1..{new_size} (the new size): there is no "
                "consistency proof from the empty tree"
            )
        if old_size == new_size:
            return []
        # SUBPROOF(m, D[start:end], whole) walked from the root down; ``whole``
        # stays true while the old tree is a prefix that is a node of its own
        # (the verifier holds its root, so it is not sent).
        proof: list[bytes] = []
        start, end, whole = 0, new_size, True
        while old_size != end:
            split = start + (1 << ((end - start - 1).bit_length() - 1))
            if old_size <= split:
                proof.append(self._subtree_root(split, end))
                end = split
            else:
                proof.append(self._subtree_root(start, split))
                start, whole = split, False
        if not whole:
            proof.append(self._subtree_root(start, end))
        proof.reverse()
        return proof
