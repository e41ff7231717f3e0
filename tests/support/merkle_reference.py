"""Reference RFC 6962 builders, O(n) per call, written as the RFC defines them.

The product builds proofs with :class:`common.merkle_log.MerkleLog`; these
literal versions are the ground truth the tests (and the ledger benchmark)
compare it with.

Everything is computed bottom-up, one level at a time: adjacent nodes are
paired and an odd last node is carried up unchanged. Element ``j`` of level
``h`` is then the MTH of leaves ``[j * 2**h, min((j + 1) * 2**h, n))``, so
the top of this construction is exactly RFC 6962's recursive MTH, and the
sibling of a node's ancestor at each level (when it has one) is exactly the
corresponding component of RFC 6962's audit path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from common.merkle import EMPTY_ROOT, NODE_PREFIX

__all__ = ["consistency_proof", "inclusion_proof", "root"]

_NODE_PREFIX = NODE_PREFIX
_sha256 = hashlib.sha256


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
        The proof's node hashes; empty when ``old_size`` equals
        ``new_size``.

    Raises
    ------
    ValueError
        If ``old_size`` is not in ``1..new_size`` (no proof from the empty
        tree), or ``new_size`` exceeds ``len(leaves)``.
    """
    new_size = _tree_size(leaves, new_size)
    if not 1 <= old_size <= new_size:
        raise ValueError(f"old size {old_size} is outside 1..{new_size} (the new size)")
    if old_size == new_size:
        return []
    # The old tree's last complete subtree, of height ``start``, is the node
    # the proof climbs from; when the old tree is itself complete that node is
    # the old head, which the verifier already has, so it is left out.
    start = (old_size & -old_size).bit_length() - 1
    node, siblings = _walk_up(leaves, new_size, old_size - 1, start)
    if old_size & (old_size - 1) == 0:
        return siblings
    return [node, *siblings]
