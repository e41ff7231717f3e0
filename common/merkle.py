"""RFC 6962 / RFC 9162 Merkle trees: roots, inclusion and consistency proofs.

A leaf is hashed as ``SHA-256(0x00 || data)`` and an interior node as
``SHA-256(0x01 || left || right)``. The Merkle Tree Hash (MTH) of ``n > 1``
leaves splits them at ``k``, the largest power of two smaller than ``n``,
and hashes the two halves' roots together (RFC 6962, section 2.1); the root
of the empty tree is ``SHA-256("")``.

Proofs are generated as RFC 6962 defines them (``PATH``, section 2.1.1, and
``PROOF``, section 2.1.2) and checked with the verification algorithms of
RFC 9162 (sections 2.1.3.2 and 2.1.4.2).

Every function that takes ``leaves`` expects leaf *hashes*, i.e. values
already passed through :func:`leaf_hash`.

This module verifies proofs and computes roots incrementally
(:class:`TreeBuilder`, O(log n) state). Proofs are built by
:class:`common.merkle_log.MerkleLog`, which caches every complete subtree's
root as leaves are appended and builds any proof with O(log n) hashes; the
O(n) reference builders that follow RFC 6962's definitions literally live
with the tests (``tests/support/merkle_reference.py``), which check the two agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from common.errors import UserError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "LEAF_PREFIX",
    "NODE_PREFIX",
    "ProofError",
    "TreeBuilder",
    "leaf_hash",
    "node_hash",
    "verify_consistency",
    "verify_inclusion",
]

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
_LEAF_PREFIX, _NODE_PREFIX = LEAF_PREFIX, NODE_PREFIX
_sha256 = hashlib.sha256

EMPTY_ROOT: bytes = _sha256(b"").digest()
"""The Merkle Tree Hash of the empty tree: ``SHA-256("")``."""
HASH_SIZE = 32
"""Every leaf, node and root hash is a SHA-256 digest of this many bytes."""


class ProofError(UserError, ValueError):
    """An inclusion or consistency proof failed to verify."""


def _check_hashes(what: str, *hashes: bytes) -> None:
    """Refuse anything but 32-byte digests: a verifier must not hash whatever it is handed."""
    for value in hashes:
        if not isinstance(value, bytes) or len(value) != HASH_SIZE:
            size = len(value) if isinstance(value, bytes) else type(value).__name__
            raise ProofError(f"{what}: a hash of {size} bytes, not {HASH_SIZE}")


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
        The trusted root of the tree of ``size`` leaves.

    Raises
    ------
    ProofError
        If ``index`` is not in ``range(size)``, the leaf, the root or a
        proof component is not a 32-byte hash, the proof has too many or too
        few components for this index and size, or it does not hash up to
        ``root_hash``.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    _check_hashes(f"inclusion proof for leaf {index} of a tree of size {size}", leaf, root_hash)
    _check_hashes(f"inclusion proof for leaf {index} of a tree of size {size}", *proof)
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
        The trusted root of the earlier tree.
    new_root : bytes
        The trusted root of the later tree.
    proof : Sequence[bytes]
        The consistency proof.

    Raises
    ------
    ProofError
        If ``old_size`` is 0 (RFC 6962 defines consistency only for
        ``0 < old_size <= new_size``: every tree extends the empty one, so
        such a "proof" proves nothing and is refused rather than accepted),
        the sizes are out of order, a root or component is not a 32-byte
        hash, the sizes are equal and the roots differ or the proof is not
        empty, the proof has too many or too few components, or the
        recomputed old or new root differs from the one given.
    """
    if old_size < 1:
        raise ProofError(
            f"no consistency proof from a tree of size {old_size}: RFC 6962 defines one only "
            "from a non-empty tree"
        )
    if old_size > new_size:
        raise ProofError(f"sizes out of order: old size {old_size}, new size {new_size}")
    what = f"consistency proof from size {old_size} to {new_size}"
    _check_hashes(what, old_root, new_root)
    _check_hashes(what, *proof)
    if old_size == new_size:
        if proof:
            raise ProofError(
                f"consistency proof between equal sizes ({old_size}) must be empty, "
                f"got {len(proof)} components"
            )
        if old_root != new_root:
            raise ProofError(f"two different root hashes for the same tree size {old_size}")
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
    """Incremental Merkle root over appended leaf hashes, in O(log n) memory.

    Only the roots of the complete subtrees that make up the tree so far are
    kept (one per set bit of the size, largest first: the "compact range" of
    ``[0, size)``), so :meth:`root` equals the Merkle Tree Hash of all the leaves
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
        """Compute the root of the tree of all leaves appended so far.

        Returns
        -------
        bytes
            The Merkle Tree Hash; :data:`EMPTY_ROOT` if nothing was appended.
        """
        if not self._frontier:
            return EMPTY_ROOT
        root = self._frontier[-1]
        for left in reversed(self._frontier[:-1]):
            root = node_hash(left, root)
        return root
