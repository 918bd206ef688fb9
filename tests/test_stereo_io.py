"""Disparity files (PFM, KITTI PNG) and the Middlebury / KITTI dataset layouts."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from visionflow.config import AcquireParams, DatasetSource
from visionflow.data.acquire import AcquireError, acquire_all
from visionflow.data.disparity import (DisparityFormatError, read_disparity, read_kitti_png, read_pfm,
                                       write_disparity, write_kitti_png, write_pfm)
from visionflow.data.images import ImageReadError, write_png
from visionflow.data.stereo import check_stereo_dataset, find_pairs, list_splits, read_pair


def test_pfm_round_trip_keeps_values_and_inf(tmp_path):
    values = np.random.default_rng(0).uniform(0, 100, (5, 7)).astype(np.float32)
    values[1, 2] = np.inf
    write_pfm(tmp_path / "d.pfm", values)
    back = read_pfm(tmp_path / "d.pfm")
    assert back.dtype == np.float32 and back.shape == (5, 7)
    np.testing.assert_array_equal(back, values)
    colour = np.random.default_rng(1).normal(size=(3, 4, 3)).astype(np.float32)
    write_pfm(tmp_path / "c.pfm", colour)
    np.testing.assert_array_equal(read_pfm(tmp_path / "c.pfm"), colour)


def test_pfm_rows_are_stored_bottom_up_in_the_scale_signs_byte_order(tmp_path):
    # Hand-written files: 3 wide, 2 high; the first stored row is the image's BOTTOM row.
    bottom, top = [4.0, 5.0, 6.0], [1.0, 2.0, 3.0]
    little = b"Pf\n3 2\n-1.0\n" + struct.pack("<6f", *bottom, *top)
    big = b"Pf\n3 2\n1.0\n" + struct.pack(">6f", *bottom, *top)
    for name, data in (("little.pfm", little), ("big.pfm", big)):
        (tmp_path / name).write_bytes(data)
        np.testing.assert_array_equal(read_pfm(tmp_path / name), [top, bottom])
    write_pfm(tmp_path / "w.pfm", np.array([top, bottom], np.float32))
    assert (tmp_path / "w.pfm").read_bytes() == little.replace(b"-1.0", b"-1")


def test_pfm_errors_name_the_file(tmp_path):
    (tmp_path / "bad.pfm").write_bytes(b"P6\n3 2\n255\n")
    with pytest.raises(DisparityFormatError, match="bad.pfm: not a PFM file"):
        read_pfm(tmp_path / "bad.pfm")
    (tmp_path / "short.pfm").write_bytes(b"Pf\n3 2\n-1\n" + bytes(8))
    with pytest.raises(DisparityFormatError, match="short.pfm: PFM data holds 8 bytes"):
        read_pfm(tmp_path / "short.pfm")
    with pytest.raises(DisparityFormatError, match="d.tif: unknown disparity format"):
        read_disparity(tmp_path / "d.tif")


def test_kitti_png_round_trip_quantises_to_1_256_and_keeps_invalid(tmp_path):
    disparity = np.array([[0.0, 1.0, 37.123], [np.inf, 255.99, np.nan]], np.float32)
    write_kitti_png(tmp_path / "d.png", disparity)
    raw = cv2.imread(str(tmp_path / "d.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(raw, [[1, 256, round(37.123 * 256)], [0, round(255.99 * 256), 0]])
    back = read_kitti_png(tmp_path / "d.png")
    assert np.isinf(back[1, 0]) and np.isinf(back[1, 2])
    np.testing.assert_allclose(back[0], [1 / 256, 1.0, round(37.123 * 256) / 256])
    assert np.abs(read_disparity(tmp_path / "d.png")[np.isfinite(disparity)] - disparity[np.isfinite(disparity)]
                  ).max() <= 1 / 256
    with pytest.raises(ValueError, match="negative"):
        write_kitti_png(tmp_path / "n.png", np.array([[-1.0]]))


def test_kitti_reader_rejects_8_bit_png(tmp_path):
    write_png(tmp_path / "grey.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(DisparityFormatError, match="grey.png: KITTI disparity must be a 1-channel 16-bit"):
        read_kitti_png(tmp_path / "grey.png")


def _image(seed: int, h: int = 8, w: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def make_middlebury(root, split="trainingQ", scenes=("Adirondack", "Motorcycle"), labelled=True):
    for i, scene in enumerate(scenes):
        folder = root / split / scene
        write_png(folder / "im0.png", _image(i))
        write_png(folder / "im1.png", _image(i + 10))
        if labelled:
            disparity = np.full((8, 12), 3.5, np.float32)
            disparity[0, 0] = np.inf
            write_pfm(folder / "disp0GT.pfm", disparity)
            mask = np.full((8, 12), 255, np.uint8)
            mask[:, :3] = 128
            write_png(folder / "mask0nocc.png", mask)
            (folder / "calib.txt").write_text("cam0=[1 0 0; 0 1 0; 0 0 1]\nwidth=12\nheight=8\nndisp=16\n")


def make_kitti(root, split="training", ids=("000000", "000001")):
    for name in ids:
        for folder, seed in (("image_2", 0), ("image_3", 1)):
            write_png(root / split / folder / f"{name}_10.png", _image(seed))
            write_png(root / split / folder / f"{name}_11.png", _image(seed + 5))
        disparity = np.full((8, 12), 4.25, np.float32)
        disparity[:, -1] = np.inf
        write_kitti_png(root / split / "disp_occ_0" / f"{name}_10.png", disparity)
        disparity[:, :2] = np.inf
        write_kitti_png(root / split / "disp_noc_0" / f"{name}_10.png", disparity)


def test_middlebury_layout_reads_disparity_mask_and_ndisp(tmp_path):
    make_middlebury(tmp_path)
    assert list_splits(tmp_path) == ["trainingQ"]
    records = find_pairs(tmp_path, "trainingQ")
    assert [r.name for r in records] == ["Adirondack", "Motorcycle"]
    pair = read_pair(records[0])
    assert pair.left.shape == (8, 12, 3) and pair.max_disparity == 16
    assert np.isinf(pair.disparity[0, 0]) and pair.disparity[1, 1] == 3.5
    assert not pair.nonoccluded[:, :3].any() and pair.nonoccluded[:, 3:].all()


def test_kitti_layout_uses_frame_10_and_noc_maps(tmp_path):
    make_kitti(tmp_path)
    records = find_pairs(tmp_path, "training")
    assert [r.name for r in records] == ["000000_10", "000001_10"]
    pair = read_pair(records[1])
    assert pair.disparity[0, 0] == 4.25 and np.isinf(pair.disparity[0, -1])
    assert not pair.nonoccluded[:, :2].any() and pair.nonoccluded[:, 2:-1].all()


def test_size_mismatch_and_missing_split_name_the_files(tmp_path):
    make_middlebury(tmp_path, scenes=("A",))
    write_png(tmp_path / "trainingQ" / "A" / "im1.png", _image(0, 8, 10))
    with pytest.raises(ImageReadError, match=r"A/im1.png: right image is 10x8 but left image .*im0.png is 12x8"):
        read_pair(find_pairs(tmp_path, "trainingQ")[0])
    with pytest.raises(FileNotFoundError, match=r"split 'test' not found .*splits there: trainingQ"):
        find_pairs(tmp_path, "test")


@pytest.mark.parametrize("fmt, maker, split", [("middlebury", make_middlebury, "trainingQ"),
                                               ("kitti", make_kitti, "training")])
def test_acquire_checks_stereo_layouts(tmp_path, fmt, maker, split):
    maker(tmp_path / "src" / "wrapper")  # archives often wrap the dataset in one folder
    params = AcquireParams(datasets={"real": DatasetSource(path="src", format=fmt)})
    manifest = acquire_all(params, tmp_path / "raw", tmp_path / "dl", tmp_path, progress=False)
    assert manifest["real"]["pairs"] == 2 and manifest["real"]["labelled_pairs"] == 2
    assert find_pairs(tmp_path / "raw" / "real", split)
    wrong = "kitti" if fmt == "middlebury" else "middlebury"
    params = AcquireParams(datasets={"real": DatasetSource(path="src", format=wrong)})
    with pytest.raises(AcquireError, match=f"looks like a {fmt} layout"):
        acquire_all(params, tmp_path / "raw2", tmp_path / "dl", tmp_path, progress=False)


def test_check_stereo_dataset_wants_pairs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no stereo split folders"):
        check_stereo_dataset(tmp_path / "empty", "middlebury")


def test_write_disparity_by_suffix(tmp_path):
    disparity = np.array([[1.5, np.nan]], np.float32)
    write_disparity(tmp_path / "d.pfm", disparity)
    assert np.isinf(read_disparity(tmp_path / "d.pfm")[0, 1])


def test_a_disparity_with_no_valid_pixel_is_an_error(tmp_path):
    make_kitti(tmp_path)
    write_kitti_png(tmp_path / "training" / "disp_occ_0" / "000001_10.png", np.full((8, 12), np.inf))
    with pytest.raises(ImageReadError, match=r"000001_10.png: no valid disparity"):
        read_pair(find_pairs(tmp_path, "training")[1])


def test_stereo_training_checks_every_disparity_header_before_it_starts(tmp_path):
    from visionflow.data.disparity import check_disparity_header
    from visionflow.tasks.stereo.data import labelled_split

    make_kitti(tmp_path)
    for path in (tmp_path / "training" / "disp_occ_0").iterdir():
        check_disparity_header(path)
    labelled_split(tmp_path, "training")
    cv2.imwrite(str(tmp_path / "training" / "disp_occ_0" / "000001_10.png"), np.full((8, 12), 4, np.uint8))
    with pytest.raises(DisparityFormatError, match=r"000001_10.png: KITTI disparity must be a 1-channel 16-bit PNG, "
                                                   r"got 8-bit"):
        labelled_split(tmp_path, "training")
    write_kitti_png(tmp_path / "training" / "disp_occ_0" / "000001_10.png", np.full((8, 12), 2.0))
    write_kitti_png(tmp_path / "training" / "disp_occ_0" / "000000_10.png", np.full((8, 12), np.inf))
    with pytest.raises(ImageReadError, match=r"000000_10.png: no valid disparity"):
        labelled_split(tmp_path, "training")
