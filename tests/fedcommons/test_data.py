import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from common.images import DataError, ImageData, load_image_data, write_npz
from common.policy import Policy
from fedcommons.demo_setup import prepare_data
from fedcommons.partition import (
    PartitionError,
    load_digits_data,
    partition_dirichlet,
    partition_iid,
    split_holdout,
)
from tests.support.attacks import flip_labels

LOAD = {"num_classes": 10, "image_size": 8}


def test_digits_are_the_real_sklearn_set() -> None:
    data = load_digits_data()
    assert data.images.shape == (1797, 1, 8, 8)
    assert data.images.dtype == np.float32
    assert data.images.min() == 0.0 and data.images.max() == 1.0
    assert np.bincount(data.labels).tolist()[:3] == [178, 182, 177]


def test_holdout_split_is_stratified_disjoint_and_complete() -> None:
    data = load_digits_data()
    train, val, test = split_holdout(data, 0.1, 0.2, seed=1)
    assert len(train) + len(val) + len(test) == 1797
    assert len(test) == 360 and len(val) == 180
    # every class keeps (close to) its share in the test split
    share = np.bincount(test.labels, minlength=10) / len(test)
    assert np.all(np.abs(share - 0.1) < 0.02)


def test_iid_partition_sizes_and_determinism() -> None:
    parts = partition_iid(100, 3, seed=7)
    assert [len(p) for p in parts] == [34, 33, 33]
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    assert all(
        np.array_equal(a, b) for a, b in zip(parts, partition_iid(100, 3, seed=7), strict=True)
    )
    assert not np.array_equal(parts[0], partition_iid(100, 3, seed=8)[0])
    with pytest.raises(PartitionError, match=r"among 3 institutions: .* so at most 2 institutions"):
        partition_iid(2, 3, seed=0)


def _label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each part's label mix and the global mix."""
    overall = np.bincount(labels, minlength=10) / len(labels)
    return float(
        np.mean(
            [
                0.5 * np.abs(np.bincount(labels[p], minlength=10) / len(p) - overall).sum()
                for p in parts
            ]
        )
    )


def test_dirichlet_partition_skews_labels_and_is_deterministic() -> None:
    labels = load_digits_data().labels
    skewed = partition_dirichlet(labels, 3, alpha=0.3, seed=3)
    mild = partition_dirichlet(labels, 3, alpha=1000.0, seed=3)
    iid = partition_iid(len(labels), 3, seed=3)
    assert sorted(np.concatenate(skewed).tolist()) == list(range(len(labels)))
    assert min(len(p) for p in skewed) >= 10
    assert _label_skew(labels, skewed) > 0.25
    assert _label_skew(labels, mild) < 0.05
    assert _label_skew(labels, iid) < 0.1
    again = partition_dirichlet(labels, 3, alpha=0.3, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(skewed, again, strict=True))
    with pytest.raises(ValueError, match="alpha must be > 0"):
        partition_dirichlet(labels, 3, alpha=0.0, seed=0)


def test_npz_round_trip(tmp_path: Path) -> None:
    data = load_digits_data().subset(np.arange(20))
    write_npz(tmp_path / "d.npz", data)
    loaded = load_image_data(tmp_path, **LOAD)
    np.testing.assert_array_equal(loaded.images, data.images)
    np.testing.assert_array_equal(loaded.labels, data.labels)
    assert loaded.source == str(tmp_path / "d.npz")


def test_uint8_images_are_scaled(tmp_path: Path) -> None:
    path = tmp_path / "u8.npz"
    np.savez(path, images=np.full((2, 8, 8), 255, np.uint8), labels=np.array([0, 1]))
    assert load_image_data(path, **LOAD).images.max() == 1.0


def test_png_folder(tmp_path: Path) -> None:
    for i, _label in enumerate([3, 7]):
        Image.fromarray(np.full((8, 8), 51 * (i + 1), np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "labels.csv").write_text("file,label\nimg0.png,3\nimg1.png,7\n")
    data = load_image_data(tmp_path, **LOAD)
    assert data.labels.tolist() == [3, 7]
    assert data.images.shape == (2, 1, 8, 8)
    assert data.images[1, 0, 0, 0] == pytest.approx(102 / 255)


def _npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": np.zeros((2, 8, 8))}, "missing array(s) labels; found images"),
        ({"labels": np.zeros(2, int)}, "missing array(s) images; found labels"),
        (
            {"images": np.zeros((2, 7, 8)), "labels": np.zeros(2, int)},
            "images must have shape (N, 8, 8), got (2, 7, 8)",
        ),
        (
            {"images": np.zeros((2, 8, 8)), "labels": np.zeros(3, int)},
            "labels must have shape (2,)",
        ),
        ({"images": np.zeros((0, 8, 8)), "labels": np.zeros(0, int)}, "the data set is empty"),
        (
            {"images": np.zeros((2, 8, 8)), "labels": np.array([0, 10])},
            "label 10 at index 1 is out of range [0, 10)",
        ),
        (
            {"images": np.zeros((2, 8, 8)), "labels": np.array([-1, 0])},
            "label -1 at index 0 is out of range",
        ),
        (
            {"images": np.zeros((2, 8, 8)), "labels": np.array([0.5, 1.0])},
            "labels must be integers",
        ),
        (
            {"images": np.full((2, 8, 8), 2.0), "labels": np.zeros(2, int)},
            "float images must lie in [0, 1]",
        ),
        ({"images": np.full((2, 8, 8), np.nan), "labels": np.zeros(2, int)}, "NaN or infinite"),
        (
            {"images": np.zeros((2, 8, 8), np.int32), "labels": np.zeros(2, int)},
            "images must be uint8 (0-255) or float (0-1)",
        ),
    ],
)
def test_bad_npz_names_file_and_problem(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as info:
        load_image_data(path, **LOAD)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=re.escape("garbage.npz: not an .npz file")):
        load_image_data(garbage, **LOAD)
    with pytest.raises(DataError, match="nothere: no such file or folder"):
        load_image_data(tmp_path / "nothere", **LOAD)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=re.escape("found 0 .npz files")):
        load_image_data(empty, **LOAD)


def test_pickled_object_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, images=np.array([object()], dtype=object), labels=np.zeros(1, int))
    with pytest.raises(
        DataError,
        match=re.escape("objects.npz: holds pickled Python objects, which FedCommons never loads"),
    ):
        load_image_data(path, **LOAD)


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("name,y\nimg0.png,1\n", "the first line must be the header 'file,label'"),
        ("file,label\nimg0.png\n", "line 2: expected 2 columns, got 1"),
        ("file,label\nimg0.png,cat\n", "line 2: label 'cat' is not an integer"),
        ("file,label\nmissing.png,1\n", "line 2: image"),
        ("file,label\n", "no images listed"),
        ("file,label\nimg0.png,11\n", "label 11 at index 0 is out of range"),
        ("file,label\nbroken.png,1\n", "broken.png: unreadable image"),
    ],
)
def test_bad_png_folder(tmp_path: Path, csv_text: str, message: str) -> None:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "img0.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG but not really")
    (tmp_path / "labels.csv").write_text(csv_text)
    with pytest.raises(DataError) as info:
        load_image_data(tmp_path, **LOAD)
    assert message in str(info.value)


def test_image_data_subset_keeps_source() -> None:
    data = ImageData(np.zeros((3, 1, 8, 8), np.float32), np.arange(3), "x")
    assert data.subset(np.array([2])).labels.tolist() == [2]
    assert data.subset(np.array([2])).source == "x"


def test_the_demo_split_serves_any_number_of_institutions(tmp_path: Path) -> None:
    """Benchmarks size larger consortia with the demo's own split: every record used once."""
    policy = Policy()
    names = [(f"inst{i}", "academia" if i % 2 else "industry") for i in range(5)]
    layout = prepare_data(tmp_path, policy, names)
    assert [n.institution for n in layout.nodes] == [name for name, _ in names]
    assert layout.kinds == dict(names)
    assert all(count >= 10 for count in layout.examples.values())
    three = prepare_data(tmp_path / "three", policy)  # the demo's default
    assert sum(layout.examples.values()) == sum(three.examples.values())


@pytest.mark.parametrize("names", [[], [("a", "academia"), ("a", "industry")]])
def test_the_demo_split_refuses_no_or_repeated_institutions(
    tmp_path: Path, names: list[tuple[str, str]]
) -> None:
    with pytest.raises(ValueError, match="distinct names"):
        prepare_data(tmp_path, Policy(), names)


def test_label_flipping_maps_each_label_to_its_mirror() -> None:
    data = ImageData(np.zeros((4, 1, 8, 8), np.float32), np.array([0, 3, 9, 5]), "x")
    flipped = flip_labels(data, 10)
    assert flipped.labels.tolist() == [9, 6, 0, 4]
    assert flipped.images is data.images
    with pytest.raises(ValueError, match="outside"):
        flip_labels(data, 5)
