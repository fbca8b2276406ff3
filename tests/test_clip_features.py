import numpy as np
import pytest
import torch

from clipsam.backbones import build_clip
from clipsam.clip_features import ClipFeatureTap, interpolate_position_embedding, preprocess_images
from clipsam.config import ClipTapConfig
from model_store.profiles import TINY_CLIP_CONFIG


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return build_clip(TINY_CLIP_CONFIG)


def test_position_embedding_identity_at_native_grid():
    pos = torch.randn(1 + 14 * 14, 32)
    assert interpolate_position_embedding(pos, (14, 14)) is pos


def test_position_embedding_interpolates_patch_part_only():
    pos = torch.randn(1 + 14 * 14, 32)
    out = interpolate_position_embedding(pos, (16, 16))
    assert out.shape == (1 + 256, 32)
    assert torch.equal(out[0], pos[0])


@pytest.mark.parametrize("size", [224, 256, 320])
def test_taps_shapes_at_several_input_sizes(clip, size):
    config = ClipTapConfig(input_size=size, layers=(1, 3, 4))
    tap = ClipFeatureTap(clip, config)
    images = [np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(100, 140), (300, 90)]]
    with torch.no_grad():
        out = tap(preprocess_images(images, config))
    grid = size // 16
    assert [t.shape for t in out.patch_tokens] == [(2, grid, grid, 128)] * 3
    assert out.image_embedding.shape == (2, 64)
    assert torch.allclose(out.image_embedding.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_native_size_cls_matches_open_clip(clip):
    """At the native size our block walk must reproduce open_clip's own encode_image exactly."""
    config = ClipTapConfig(input_size=224, layers=(4,))
    x = preprocess_images([np.full((224, 224, 3), 120, np.uint8)], config)
    with torch.no_grad():
        ours = ClipFeatureTap(clip, config)(x).image_embedding
        theirs = torch.nn.functional.normalize(clip.encode_image(x), dim=-1)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_rejects_bad_layers_and_sizes(clip):
    with pytest.raises(ValueError, match="outside 1..4"):
        ClipFeatureTap(clip, ClipTapConfig(input_size=224, layers=(5,)))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        ClipFeatureTap(clip, ClipTapConfig(input_size=230, layers=(1,)))


def test_preprocess_resizes_whole_image_without_crop():
    config = ClipTapConfig(input_size=64)
    image = np.zeros((50, 200, 3), np.uint8)
    image[:, -10:] = 255  # a bright stripe at the right border must survive (no centre crop)
    x = preprocess_images([image], config)
    assert x.shape == (1, 3, 64, 64)
    assert x[0, 0, :, -1].mean() > x[0, 0, :, 0].mean() + 1.0
