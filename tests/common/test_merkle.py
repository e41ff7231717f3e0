"""Tests for common.merkle: published known answers, every proof of small trees, bad proofs.

Known-answer data is the Certificate Transparency / Trillian test data, as
published in github.com/transparency-dev/merkle (the successor of Trillian's
``merkle`` package):

* ``testonly/constants.go``: the eight leaf inputs, ``NodeHashes()`` (the
  head of every complete subtree of the 8-leaf tree) and ``RootHashes()``
  (the heads of the trees of sizes 0..8);
* ``proof/verify_test.go``: ``inclusionProofs`` (leaf numbers there are
  1-based) and ``consistencyProofs``.

Inclusion proofs for leaves 3, 4 and 6 of the 8-leaf tree are not among the
published proofs; their expected values are assembled here from the
published ``NodeHashes()`` table (an audit path is a list of subtree heads)
and cross-checked against the direct recursive reference below.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from common.merkle import (
    EMPTY_ROOT,
    ProofError,
    TreeBuilder,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from common.merkle_log import MerkleLog
from tests.support.merkle_reference import consistency_proof, inclusion_proof, root

# --------------------------------------------------------------------------
# Published test data (transparency-dev/merkle testonly/constants.go).

LEAF_INPUTS = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
]
LEAVES = [leaf_hash(bytes.fromhex(h)) for h in LEAF_INPUTS]

# NODE_HASHES[height][j] = head of leaves [j * 2**height, (j + 1) * 2**height).
NODE_HASHES = [
    [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]
NH = NODE_HASHES

# ROOTS[n] = head of the tree of the first n leaves.
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

# (zero-based index, size) -> audit path; proof/verify_test.go inclusionProofs.
PUBLISHED_INCLUSION = {
    (0, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (5, 8): [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 3): ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    (1, 5): [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
    (0, 1): [],
}

# Audit paths in the 8-leaf tree assembled from the published NodeHashes table.
TABLE_INCLUSION = {
    (3, 8): [NH[0][2], NH[1][0], NH[2][1]],
    (4, 8): [NH[0][5], NH[1][3], NH[2][0]],
    (6, 8): [NH[0][7], NH[1][2], NH[2][0]],
    (7, 8): [NH[0][6], NH[1][2], NH[2][0]],
}

# (old size, new size) -> proof; proof/verify_test.go consistencyProofs.
PUBLISHED_CONSISTENCY = {
    (1, 1): [],
    (1, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
    (6, 7): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}

# --------------------------------------------------------------------------
# Direct transcriptions of RFC 6962's recursive definitions (section 2.1).


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    """MTH(D[n]) over leaf hashes."""
    if not d:
        return EMPTY_ROOT
    if len(d) == 1:
        return d[0]
    k = _k(len(d))
    return node_hash(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) (section 2.1.1)."""
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) (section 2.1.2)."""
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = _k(len(d))
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) (section 2.1.2), defined for 0 < m <= n."""
    assert 0 < m <= len(d)
    if m == len(d):
        return []
    return ref_subproof(m, d, True)


def _hexes(hashes: list[bytes]) -> list[str]:
    return [h.hex() for h in hashes]


def _unhex(hexes: list[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in hexes]


def _flip(proof: list[bytes], at: int, bit: int = 0) -> list[bytes]:
    """A copy of ``proof`` with one bit of component ``at`` flipped."""
    changed = list(proof)
    component = bytearray(changed[at])
    component[bit // 8] ^= 1 << (bit % 8)
    changed[at] = bytes(component)
    return changed


SMALL = [leaf_hash(i.to_bytes(2, "big")) for i in range(70)]
OTHER = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")

# --------------------------------------------------------------------------
# Hashing and tree heads.


def test_hash_primitives_match_published_values() -> None:
    assert EMPTY_ROOT.hex() == ROOTS[0]
    assert [h.hex() for h in LEAVES] == NODE_HASHES[0]
    assert node_hash(LEAVES[0], LEAVES[1]).hex() == NODE_HASHES[1][0]
    assert leaf_hash(b"") != node_hash(b"", b"")  # domain separation


@pytest.mark.parametrize("size", range(9))
def test_known_roots(size: int) -> None:
    assert root(LEAVES[:size]).hex() == ROOTS[size]
    builder = TreeBuilder()
    for leaf in LEAVES[:size]:
        builder.append(leaf)
    assert builder.root().hex() == ROOTS[size]


def test_every_published_subtree_head() -> None:
    for height, row in enumerate(NODE_HASHES):
        width = 1 << height
        for j, expected in enumerate(row):
            assert root(LEAVES[j * width : (j + 1) * width]).hex() == expected


def test_root_equals_recursive_definition_for_sizes_0_to_70() -> None:
    for n in range(71):
        assert root(SMALL[:n]) == ref_mth(SMALL[:n]), n
    assert root(tuple(SMALL[:5])) == ref_mth(SMALL[:5])  # any Sequence


def test_tree_builder_matches_root_at_every_size() -> None:
    builder = TreeBuilder()
    assert builder.size == 0 and builder.root() == EMPTY_ROOT
    for n in range(1, 41):
        assert builder.append(SMALL[n - 1]) == n
        assert builder.size == n
        assert builder.root() == root(SMALL[:n])


def test_tree_builder_keeps_logarithmic_state_on_a_larger_tree() -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(5000)]
    builder = TreeBuilder()
    for leaf in leaves:
        builder.append(leaf)
    assert builder.root() == root(leaves)
    assert len(builder._frontier) == bin(5000).count("1")


# --------------------------------------------------------------------------
# Known inclusion and consistency proofs.


@pytest.mark.parametrize(("index", "size"), sorted(PUBLISHED_INCLUSION))
def test_published_inclusion_proofs(index: int, size: int) -> None:
    proof = inclusion_proof(LEAVES, index, size)
    assert _hexes(proof) == PUBLISHED_INCLUSION[(index, size)]
    verify_inclusion(LEAVES[index], index, size, proof, bytes.fromhex(ROOTS[size]))


@pytest.mark.parametrize(("index", "size"), sorted(TABLE_INCLUSION))
def test_inclusion_proofs_from_published_node_table(index: int, size: int) -> None:
    proof = inclusion_proof(LEAVES, index, size)
    assert _hexes(proof) == TABLE_INCLUSION[(index, size)]
    assert proof == ref_path(index, LEAVES[:size])
    verify_inclusion(LEAVES[index], index, size, proof, bytes.fromhex(ROOTS[size]))


def test_inclusion_proof_defaults_to_all_leaves() -> None:
    assert _hexes(inclusion_proof(LEAVES, 5)) == PUBLISHED_INCLUSION[(5, 8)]


@pytest.mark.parametrize(("old", "new"), sorted(PUBLISHED_CONSISTENCY))
def test_published_consistency_proofs(old: int, new: int) -> None:
    proof = consistency_proof(LEAVES, old, new)
    assert _hexes(proof) == PUBLISHED_CONSISTENCY[(old, new)]
    verify_consistency(old, new, bytes.fromhex(ROOTS[old]), bytes.fromhex(ROOTS[new]), proof)


def test_consistency_proof_defaults_to_all_leaves() -> None:
    assert _hexes(consistency_proof(LEAVES, 6)) == PUBLISHED_CONSISTENCY[(6, 8)]
    assert consistency_proof(LEAVES, 8) == []


# --------------------------------------------------------------------------
# Every proof of every small tree.


def test_every_inclusion_proof_up_to_size_40() -> None:
    for n in range(1, 41):
        head = root(SMALL[:n])
        for i in range(n):
            proof = inclusion_proof(SMALL, i, n)
            assert proof == ref_path(i, SMALL[:n]), (i, n)
            verify_inclusion(SMALL[i], i, n, proof, head)


def test_every_consistency_proof_up_to_size_40() -> None:
    heads = [root(SMALL[:n]) for n in range(41)]
    for n in range(1, 41):
        for m in range(1, n + 1):
            proof = consistency_proof(SMALL, m, n)
            assert proof == ref_proof(m, SMALL[:n]), (m, n)
            verify_consistency(m, n, heads[m], heads[n], proof)


def test_every_tampered_proof_up_to_size_16_is_rejected() -> None:
    heads = [root(SMALL[:n]) for n in range(17)]
    for n in range(1, 17):
        for i in range(n):
            proof = inclusion_proof(SMALL, i, n)
            bad = [_flip(proof, at, bit=7) for at in range(len(proof))]
            bad += [[*proof, heads[n]], [heads[n], *proof]]
            bad += [proof[:at] + proof[at + 1 :] for at in range(len(proof))]
            for candidate in bad:
                with pytest.raises(ProofError):
                    verify_inclusion(SMALL[i], i, n, candidate, heads[n])
            for j in {*range(n)} - {i}:
                with pytest.raises(ProofError):
                    verify_inclusion(SMALL[i], j, n, proof, heads[n])
        for m in range(1, n):
            proof = consistency_proof(SMALL, m, n)
            bad = [_flip(proof, at, bit=7) for at in range(len(proof))]
            bad += [[*proof, heads[n]], [heads[m], *proof]]
            bad += [proof[:at] + proof[at + 1 :] for at in range(len(proof))]
            for candidate in bad:
                with pytest.raises(ProofError):
                    verify_consistency(m, n, heads[m], heads[n], candidate)
            with pytest.raises(ProofError):
                verify_consistency(m, n, heads[m - 1], heads[n], proof)
            with pytest.raises(ProofError):
                verify_consistency(m, n, heads[m], heads[n - 1], proof)


# --------------------------------------------------------------------------
# Named negative cases on the published vectors.

ROOT1 = bytes.fromhex(ROOTS[1])
ROOT8 = bytes.fromhex(ROOTS[8])
PROOF_5_OF_8 = _unhex(PUBLISHED_INCLUSION[(5, 8)])

BAD_INCLUSION = {
    "bit flipped in component 0": (LEAVES[5], 5, 8, _flip(PROOF_5_OF_8, 0), ROOT8),
    "bit flipped in component 1": (LEAVES[5], 5, 8, _flip(PROOF_5_OF_8, 1, bit=3), ROOT8),
    "bit flipped in component 2": (LEAVES[5], 5, 8, _flip(PROOF_5_OF_8, 2, bit=255), ROOT8),
    "index - 1": (LEAVES[5], 4, 8, PROOF_5_OF_8, ROOT8),
    "index + 1": (LEAVES[5], 6, 8, PROOF_5_OF_8, ROOT8),
    "index ^ 2": (LEAVES[5], 7, 8, PROOF_5_OF_8, ROOT8),
    "index == size": (LEAVES[5], 8, 8, PROOF_5_OF_8, ROOT8),
    "negative index": (LEAVES[5], -1, 8, PROOF_5_OF_8, ROOT8),
    "size 6 (proof too long)": (LEAVES[5], 5, 6, PROOF_5_OF_8, ROOT8),
    "size * 2 (proof too short)": (LEAVES[5], 5, 16, PROOF_5_OF_8, ROOT8),
    "size / 2 (index out of range)": (LEAVES[5], 5, 4, PROOF_5_OF_8, ROOT8),
    "size 0": (LEAVES[5], 0, 0, [], EMPTY_ROOT),
    "extra component at the end": (LEAVES[5], 5, 8, [*PROOF_5_OF_8, ROOT8], ROOT8),
    "extra component at the front": (LEAVES[5], 5, 8, [OTHER, *PROOF_5_OF_8], ROOT8),
    "empty extra component": (LEAVES[5], 5, 8, [*PROOF_5_OF_8, b""], ROOT8),
    "missing last component": (LEAVES[5], 5, 8, PROOF_5_OF_8[:-1], ROOT8),
    "missing first component": (LEAVES[5], 5, 8, PROOF_5_OF_8[1:], ROOT8),
    "empty proof": (LEAVES[5], 5, 8, [], ROOT8),
    "wrong root (size 7)": (LEAVES[5], 5, 8, PROOF_5_OF_8, bytes.fromhex(ROOTS[7])),
    "wrong root (empty tree)": (LEAVES[5], 5, 8, PROOF_5_OF_8, EMPTY_ROOT),
    "wrong leaf": (LEAVES[4], 5, 8, PROOF_5_OF_8, ROOT8),
    "raw data instead of leaf hash": (bytes.fromhex(LEAF_INPUTS[5]), 5, 8, PROOF_5_OF_8, ROOT8),
    "one-leaf tree, wrong root": (LEAVES[0], 0, 1, [], OTHER),
    "one-leaf tree, extra component": (LEAVES[0], 0, 1, [LEAVES[1]], ROOT1),
}


@pytest.mark.parametrize("case", sorted(BAD_INCLUSION))
def test_bad_inclusion_proof_is_rejected(case: str) -> None:
    leaf, index, size, proof, head = BAD_INCLUSION[case]
    with pytest.raises(ProofError):
        verify_inclusion(leaf, index, size, proof, head)


def test_inclusion_error_messages() -> None:
    with pytest.raises(ProofError, match="not in a tree of size 8"):
        verify_inclusion(LEAVES[5], 8, 8, PROOF_5_OF_8, ROOT8)
    with pytest.raises(ProofError, match="too many components"):
        verify_inclusion(LEAVES[5], 5, 8, [*PROOF_5_OF_8, ROOT8], ROOT8)
    with pytest.raises(ProofError, match="too few components"):
        verify_inclusion(LEAVES[5], 5, 8, PROOF_5_OF_8[:-1], ROOT8)
    with pytest.raises(ProofError, match="does not lead to the expected root"):
        verify_inclusion(LEAVES[5], 5, 8, _flip(PROOF_5_OF_8, 0), ROOT8)


ROOT6 = bytes.fromhex(ROOTS[6])
PROOF_6_TO_8 = _unhex(PUBLISHED_CONSISTENCY[(6, 8)])
PROOF_1_TO_8 = _unhex(PUBLISHED_CONSISTENCY[(1, 8)])

BAD_CONSISTENCY = {
    "bit flipped in component 0": (6, 8, ROOT6, ROOT8, _flip(PROOF_6_TO_8, 0, bit=4)),
    "bit flipped in component 1": (6, 8, ROOT6, ROOT8, _flip(PROOF_6_TO_8, 1)),
    "bit flipped in component 2": (6, 8, ROOT6, ROOT8, _flip(PROOF_6_TO_8, 2, bit=200)),
    "bit flipped (old size a power of two)": (1, 8, ROOT1, ROOT8, _flip(PROOF_1_TO_8, 0)),
    "extra component at the end": (6, 8, ROOT6, ROOT8, [*PROOF_6_TO_8, ROOT8]),
    "extra component at the front": (6, 8, ROOT6, ROOT8, [PROOF_6_TO_8[0], *PROOF_6_TO_8]),
    "extra old root at the front": (6, 8, ROOT6, ROOT8, [ROOT6, *PROOF_6_TO_8]),
    "extra component (old size a power of two)": (1, 8, ROOT1, ROOT8, [ROOT1, *PROOF_1_TO_8]),
    "missing last component": (6, 8, ROOT6, ROOT8, PROOF_6_TO_8[:-1]),
    "missing first component": (6, 8, ROOT6, ROOT8, PROOF_6_TO_8[1:]),
    "missing component (old size a power of two)": (1, 8, ROOT1, ROOT8, PROOF_1_TO_8[:-1]),
    "empty proof": (6, 8, ROOT6, ROOT8, []),
    "wrong old root": (6, 8, bytes.fromhex(ROOTS[5]), ROOT8, PROOF_6_TO_8),
    "wrong new root": (6, 8, ROOT6, bytes.fromhex(ROOTS[7]), PROOF_6_TO_8),
    "swapped roots": (6, 8, ROOT8, ROOT6, PROOF_6_TO_8),
    "old size - 1": (5, 8, ROOT6, ROOT8, PROOF_6_TO_8),
    "old size + 1": (7, 8, ROOT6, ROOT8, PROOF_6_TO_8),
    "old size ^ 2": (4, 8, ROOT6, ROOT8, PROOF_6_TO_8),
    "new size * 2": (6, 16, ROOT6, ROOT8, PROOF_6_TO_8),
    "new size / 2 (old > new)": (6, 4, ROOT6, ROOT8, PROOF_6_TO_8),
    "negative old size": (-1, 8, ROOT6, ROOT8, PROOF_6_TO_8),
    "old size 0 with a proof": (0, 8, EMPTY_ROOT, ROOT8, PROOF_1_TO_8),
    "old size 0 with a non-empty-tree root": (0, 8, ROOT1, ROOT8, []),
    "equal sizes, different roots": (8, 8, ROOT6, ROOT8, []),
    "equal sizes with a proof": (8, 8, ROOT8, ROOT8, PROOF_6_TO_8),
    "both empty, wrong root": (0, 0, ROOT1, ROOT1, []),
}


@pytest.mark.parametrize("case", sorted(BAD_CONSISTENCY))
def test_bad_consistency_proof_is_rejected(case: str) -> None:
    old_size, new_size, old_root, new_root, proof = BAD_CONSISTENCY[case]
    with pytest.raises(ProofError):
        verify_consistency(old_size, new_size, old_root, new_root, proof)


def test_equal_sizes_need_no_consistency_proof() -> None:
    verify_consistency(8, 8, ROOT8, ROOT8, [])
    verify_consistency(1, 1, ROOT1, ROOT1, [])


@pytest.mark.parametrize(
    ("old", "new", "old_root", "new_root"),
    [(0, 0, EMPTY_ROOT, EMPTY_ROOT), (0, 8, EMPTY_ROOT, ROOT8), (0, 1, EMPTY_ROOT, ROOT1)],
)
def test_no_consistency_proof_from_the_empty_tree_is_accepted(
    old: int, new: int, old_root: bytes, new_root: bytes
) -> None:
    """RFC 6962 defines consistency only from a non-empty tree; Go's tlog refuses it too."""
    with pytest.raises(ProofError, match="from a tree of size 0"):
        verify_consistency(old, new, old_root, new_root, [])


def test_no_consistency_proof_from_the_empty_tree_is_generated() -> None:
    with pytest.raises(ValueError, match="no consistency proof from the empty tree"):
        MerkleLog(LEAVES).consistency_proof(0)
    with pytest.raises(ValueError, match=r"outside 1\.\.8"):
        consistency_proof(LEAVES, 0)


@pytest.mark.parametrize("size", [0, 1, 31, 33, 64])
def test_hashes_of_the_wrong_length_are_refused(size: int) -> None:
    wrong = bytes(size)
    proof = [bytes.fromhex(h) for h in PUBLISHED_INCLUSION[(5, 8)]]
    with pytest.raises(ProofError, match=f"a hash of {size} bytes"):
        verify_inclusion(wrong, 5, 8, proof, ROOT8)
    with pytest.raises(ProofError, match=f"a hash of {size} bytes"):
        verify_inclusion(LEAVES[5], 5, 8, proof, wrong)
    with pytest.raises(ProofError, match=f"a hash of {size} bytes"):
        verify_inclusion(LEAVES[5], 5, 8, [*proof[:-1], wrong], ROOT8)
    with pytest.raises(ProofError, match=f"a hash of {size} bytes"):
        verify_consistency(6, 8, wrong, ROOT8, PROOF_6_TO_8)
    with pytest.raises(ProofError, match=f"a hash of {size} bytes"):
        verify_consistency(8, 8, wrong, wrong, [])
    with pytest.raises(ProofError, match=f"a hash of {size} bytes"):
        verify_consistency(6, 8, ROOT6, ROOT8, [*PROOF_6_TO_8[:-1], wrong])


def test_an_empty_leaf_and_root_with_an_empty_proof_are_refused() -> None:
    """The case an outside check found: it verified as a one-leaf tree before."""
    with pytest.raises(ProofError, match="a hash of 0 bytes"):
        verify_inclusion(b"", 0, 1, [], b"")


def test_consistency_error_messages() -> None:
    with pytest.raises(ProofError, match="out of order"):
        verify_consistency(8, 6, ROOT8, ROOT6, PROOF_6_TO_8)
    with pytest.raises(ProofError, match="too many components"):
        verify_consistency(6, 8, ROOT6, ROOT8, [*PROOF_6_TO_8, ROOT8])
    with pytest.raises(ProofError, match="too few components"):
        verify_consistency(6, 8, ROOT6, ROOT8, PROOF_6_TO_8[:-1])
    with pytest.raises(ProofError, match="root hash of size 6"):
        verify_consistency(6, 8, bytes.fromhex(ROOTS[5]), ROOT8, PROOF_6_TO_8)
    with pytest.raises(ProofError, match="root hash of size 8"):
        verify_consistency(6, 8, ROOT6, bytes.fromhex(ROOTS[7]), PROOF_6_TO_8)
    with pytest.raises(ProofError, match="same tree size"):
        verify_consistency(8, 8, ROOT6, ROOT8, [])
    with pytest.raises(ProofError, match="from a tree of size 0"):
        verify_consistency(0, 8, EMPTY_ROOT, ROOT8, PROOF_1_TO_8)
    assert issubclass(ProofError, ValueError)


# --------------------------------------------------------------------------
# Argument checking of the proof builders.


@pytest.mark.parametrize(
    ("index", "size"), [(8, None), (-1, None), (3, 3), (0, 0), (0, 9), (0, -1)]
)
def test_inclusion_proof_rejects_bad_arguments(index: int, size: int | None) -> None:
    with pytest.raises(ValueError):
        inclusion_proof(LEAVES, index, size)


@pytest.mark.parametrize(("old", "new"), [(5, 4), (-1, 8), (0, 9), (9, None), (0, -1)])
def test_consistency_proof_rejects_bad_arguments(old: int, new: int | None) -> None:
    with pytest.raises(ValueError):
        consistency_proof(LEAVES, old, new)


# --------------------------------------------------------------------------
# MerkleLog: the cached tree gives exactly the leaf-list functions' results.

MANY = [leaf_hash(i.to_bytes(4, "big")) for i in range(4097)]


def _log(leaves: list[bytes]) -> MerkleLog:
    log = MerkleLog()
    for n, leaf in enumerate(leaves, start=1):
        assert log.append(leaf) == n
    return log


def test_merkle_log_known_answers() -> None:
    log = _log(LEAVES)
    for size in range(9):
        assert log.root(size).hex() == ROOTS[size]
    for height, row in enumerate(NODE_HASHES):
        assert [h.hex() for h in log._levels[height]] == row
    for (index, size), expected in PUBLISHED_INCLUSION.items():
        assert _hexes(log.inclusion_proof(index, size)) == expected
    for (index, size), table in TABLE_INCLUSION.items():
        assert _hexes(log.inclusion_proof(index, size)) == table
    for (old, new), expected in PUBLISHED_CONSISTENCY.items():
        assert _hexes(log.consistency_proof(old, new)) == expected
    assert _hexes(log.inclusion_proof(5)) == PUBLISHED_INCLUSION[(5, 8)]
    assert _hexes(log.consistency_proof(6)) == PUBLISHED_CONSISTENCY[(6, 8)]
    assert log.root().hex() == ROOTS[8]


def test_merkle_log_root_at_every_size_while_appending() -> None:
    log = MerkleLog()
    assert log.size == len(log) == 0 and log.root() == EMPTY_ROOT
    for n in range(1, 300):
        log.append(MANY[n - 1])
        assert log.size == len(log) == n
        assert log.root() == root(MANY[:n]), n
    assert list(log.leaves) == MANY[:299]


@pytest.mark.parametrize("appended", [64, 70])
def test_merkle_log_every_proof_up_to_size_64(appended: int) -> None:
    """Every (index, size) and (old, new) pair, also for trees smaller than the log."""
    log = _log(MANY[:appended])
    for n in range(1, 65):
        assert log.root(n) == root(MANY[:n])
        for i in range(n):
            assert log.inclusion_proof(i, n) == inclusion_proof(MANY, i, n), (i, n)
        for m in range(1, n + 1):
            assert log.consistency_proof(m, n) == consistency_proof(MANY, m, n), (m, n)


def test_merkle_log_proofs_grow_with_the_log() -> None:
    """Proofs asked for between appends, at the current size and at every earlier one."""
    log = MerkleLog()
    for n in range(1, 34):
        log.append(MANY[n - 1])
        for i in range(n):
            assert log.inclusion_proof(i) == inclusion_proof(MANY[:n], i)
        for m in range(1, n + 1):
            assert log.consistency_proof(m) == consistency_proof(MANY[:n], m)


@pytest.mark.parametrize("size", [1000, 1024, 4095, 4096, 4097])
def test_merkle_log_matches_on_larger_trees(size: int) -> None:
    log = MerkleLog(MANY)  # 4097 leaves; the tree of the first ``size`` is asked for
    head = root(MANY[:size])
    assert log.root(size) == head
    rng = random.Random(size)
    indices = {0, 1, size // 3, size // 2, size - 2, size - 1}
    indices |= {rng.randrange(size) for _ in range(40)}
    for i in sorted(indices):
        proof = log.inclusion_proof(i, size)
        assert proof == inclusion_proof(MANY, i, size), i
        verify_inclusion(MANY[i], i, size, proof, head)
    olds = {1, 2, 3, size // 2, size - 1, size}
    olds |= {rng.randrange(1, size + 1) for _ in range(40)}
    olds |= {1 << b for b in range(size.bit_length()) if 1 << b <= size}
    for m in sorted(olds):
        proof = log.consistency_proof(m, size)
        assert proof == consistency_proof(MANY, m, size), m
        verify_consistency(m, size, root(MANY[:m]), head, proof)


def test_merkle_log_keeps_about_two_hashes_per_leaf() -> None:
    log = MerkleLog(MANY)
    assert [len(level) for level in log._levels] == [4097 >> h for h in range(13)]
    assert sum(len(level) for level in log._levels) < 2 * log.size


@pytest.mark.parametrize(
    ("index", "size"), [(8, None), (-1, None), (3, 3), (0, 0), (0, 9), (0, -1)]
)
def test_merkle_log_inclusion_proof_rejects_bad_arguments(index: int, size: int | None) -> None:
    with pytest.raises(ValueError):
        _log(LEAVES).inclusion_proof(index, size)


@pytest.mark.parametrize(("old", "new"), [(5, 4), (-1, 8), (0, 9), (9, None), (0, -1)])
def test_merkle_log_consistency_proof_rejects_bad_arguments(old: int, new: int | None) -> None:
    with pytest.raises(ValueError):
        _log(LEAVES).consistency_proof(old, new)


@pytest.mark.parametrize("size", [-1, 9])
def test_merkle_log_root_rejects_bad_sizes(size: int) -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.8"):
        _log(LEAVES).root(size)


def test_empty_merkle_log() -> None:
    log = MerkleLog()
    assert log.root(0) == EMPTY_ROOT
    with pytest.raises(ValueError):
        log.consistency_proof(0)
    with pytest.raises(ValueError):
        log.inclusion_proof(0)


# --------------------------------------------------------------------------
# transparency-dev's probe vectors, restated as project data
# (tests/support/data/transparency_probes.json): every correct proof holds and every
# altered one is refused, including the size-0 and wrong-length cases.

PROBES_FILE = Path(__file__).parents[1] / "support" / "data" / "transparency_probes.json"
PROBES = json.loads(PROBES_FILE.read_text())


@pytest.mark.parametrize("probe", PROBES["inclusion"], ids=lambda p: p["case"])
def test_transparency_dev_inclusion_probes(probe: dict[str, Any]) -> None:
    def check() -> None:
        verify_inclusion(
            bytes.fromhex(probe["leaf"]),
            probe["index"],
            probe["size"],
            [bytes.fromhex(h) for h in probe["path"]],
            bytes.fromhex(probe["root"]),
        )

    if probe["holds"]:
        check()
    else:
        with pytest.raises(ProofError):
            check()


@pytest.mark.parametrize("probe", PROBES["consistency"], ids=lambda p: p["case"])
def test_transparency_dev_consistency_probes(probe: dict[str, Any]) -> None:
    def check() -> None:
        verify_consistency(
            probe["old_size"],
            probe["new_size"],
            bytes.fromhex(probe["old_root"]),
            bytes.fromhex(probe["new_root"]),
            [bytes.fromhex(h) for h in probe["proof"]],
        )

    if probe["holds"]:
        check()
    else:
        with pytest.raises(ProofError):
            check()


def test_the_probes_cover_both_outcomes() -> None:
    for kind in ("inclusion", "consistency"):
        outcomes = [p["holds"] for p in PROBES[kind]]
        assert len(outcomes) > 90 and 0 < sum(outcomes) < len(outcomes)
