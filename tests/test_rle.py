import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as coco_mask

from clipsam.rle import decode_mask, encode_mask


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 97), w=st.integers(1, 101), density=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_round_trip_and_pycocotools_agree(h, w, density, seed):
    mask = np.random.default_rng(seed).random((h, w)) < density
    rle = encode_mask(mask)
    assert rle["size"] == [h, w]
    assert isinstance(rle["counts"], str)
    assert np.array_equal(decode_mask(rle), mask)
    # decodable by pycocotools itself, as any COCO tool would read the record
    theirs = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert np.array_equal(theirs.astype(bool), mask)
    assert rle["counts"].encode() == coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]
    assert int(coco_mask.area({"size": rle["size"], "counts": rle["counts"].encode()})) == int(mask.sum())


def test_c_ordered_input_is_accepted():
    mask = np.zeros((3, 5), bool)
    mask[1, 2:] = True
    assert np.array_equal(decode_mask(encode_mask(np.ascontiguousarray(mask))), mask)


def test_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        encode_mask(np.zeros((2, 2, 2), bool))
