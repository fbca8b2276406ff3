"""The tiny SAM's training (tiny.sam_training): MMR's own prompts, and that training works."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipsam.backbones import build_sam
from clipsam.config import MMRConfig
from clipsam.mmr import extract_prompts, mask_prompt_logits
from tiny.sam_training import (SamTrainConfig, mmr_prompt_iou, mmr_prompts, pretrain_encoder, soft_dice_loss, train_sam,
                                  tversky_loss)
from tiny.synthetic import generate_image
from model_store.profiles import TINY_SAM_CONFIG
from tiny.recipe import made_up_categories


def test_mmr_prompts_are_what_mmr_sends() -> None:
    mmr = MMRConfig(mask_prompt=True)
    rough = np.zeros((64, 64), np.float32)
    rough[8:20, 10:30] = 0.9  # over a defect
    rough[40:56, 40:50] = 0.7  # a false alarm
    mask = np.zeros((64, 64), bool)
    mask[10:16, 12:20] = True
    prompts = mmr_prompts(mask, rough, count=10, mmr=mmr, low=16, slots=2, rng=np.random.default_rng(0))
    expected = extract_prompts(rough, mmr)
    assert prompts is not None and len(prompts.boxes) == len(expected) == 2
    order = np.argsort(prompts.boxes[:, 0])  # the sampler picks components in random order
    for got, want in zip(order, expected):
        np.testing.assert_array_equal(prompts.boxes[got], want.box)
        np.testing.assert_array_equal(prompts.points[got][: len(want.points)], want.points)
        assert (prompts.labels[got] == 1).sum() == len(want.points)
    assert prompts.masks[order[0]].sum() == mask.sum()  # the defect, all of it inside the first box
    assert not prompts.masks[order[1]].any()  # the false alarm asks for an empty mask
    assert prompts.has_mask_input.all()
    values = F.interpolate(torch.as_tensor(rough)[None, None], size=(16, 16), mode="area")[0, 0].numpy()
    inside = np.zeros((16, 16), bool)
    x0, y0, x1, y1 = prompts.boxes[order[1]] / 4
    centres = np.arange(16) + 0.5
    inside[(centres >= y0) & (centres < y1)] = True
    inside[:, ~((centres >= x0) & (centres < x1))] = False
    np.testing.assert_allclose(prompts.mask_inputs[order[1]],
                               mask_prompt_logits(values, inside, mmr))
    assert mmr_prompts(mask, np.zeros_like(rough), 10, mmr, 16, 2, np.random.default_rng(0)) is None


def test_a_short_training_lowers_the_loss() -> None:
    torch.manual_seed(0)
    sam = build_sam(TINY_SAM_CONFIG)
    samples = [generate_image("washer", seed=3, index=i, anomalous=True, size=128) for i in range(6)]
    config = SamTrainConfig(steps=40, batch_size=4, warmup_steps=5, log_every=10, blob_p=0.5)
    losses = train_sam(sam, samples, config, MMRConfig(mask_prompt=True))
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses
    assert not sam.training


def test_rough_maps_must_match_the_samples() -> None:
    sam = build_sam(TINY_SAM_CONFIG)
    samples = [generate_image("washer", seed=3, index=0, anomalous=True, size=64)]
    with pytest.raises(ValueError, match="2 rough maps for 1 samples"):
        train_sam(sam, samples, dataclasses.replace(SamTrainConfig(), steps=1), MMRConfig(), [None, None])


@pytest.fixture(scope="module")
def unseen_defects_and_maps(tiny_model) -> tuple[list, list[np.ndarray]]:
    """Defect images of made-up categories no training step saw, and the tiny profile's stage-1 maps of them."""
    samples = [generate_image(name, seed=11, index=i, anomalous=True, size=256)
               for name in made_up_categories(160)[100:] for i in range(2)]
    maps = [result.rough_map for result in tiny_model.stage1([s.image for s in samples], [s.category for s in samples])]
    return samples, maps


def test_trained_tiny_sam_segments_the_prompts_mmr_sends(tiny_model, unseen_defects_and_maps) -> None:
    """On categories no training step saw, the tiny profile's SAM, given MMR's prompts from the
    tiny profile's own stage-1 maps, overlaps the defects about as well as the thresholded rough
    map (within 15 %). Whether it does better depends on the CPU the build ran on (the weights
    are reproducible only on one kind of CPU): see docs/decisions.md, "SAM's gain over the rough
    map depends on the build machine"."""
    samples, maps = unseen_defects_and_maps
    result = mmr_prompt_iou(tiny_model.stage2.sam.model, samples, maps, tiny_model.stage2.config)
    assert result["components"] >= 10, result
    assert result["sam"] > 0.85 * result["rough"] > 0.1, result


def test_encoder_pretraining_trains_the_image_encoder_only() -> None:
    torch.manual_seed(0)
    sam = build_sam(TINY_SAM_CONFIG)
    before = {name: value.clone() for name, value in sam.state_dict().items()}
    samples = [generate_image("washer", seed=3, index=i, anomalous=True, size=128) for i in range(2)]
    config = SamTrainConfig(encoder_pretrain_steps=6, batch_size=2, log_every=3)
    losses = pretrain_encoder(sam, samples, config)
    assert len(losses) == 2 and all(np.isfinite(losses))
    after = sam.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("image_encoder.") for name in changed), sorted(changed)
    assert "image_encoder.patch_embed.proj.weight" in changed


def test_trained_tiny_sam_reads_the_image(tiny_model, unseen_defects_and_maps) -> None:
    """The tiny SAM does not just reshape the dense prompt: on MMR's components of categories no
    training step saw, its masks fit the defects better on the real images than with the same
    prompts on flat grey images."""
    samples, maps = unseen_defects_and_maps
    grey = [dataclasses.replace(s, image=np.full_like(s.image, 128)) for s in samples]
    sam, mmr = tiny_model.stage2.sam.model, tiny_model.stage2.config
    real, blind = mmr_prompt_iou(sam, samples, maps, mmr), mmr_prompt_iou(sam, grey, maps, mmr)
    assert real["sam"] > blind["sam"] + 0.02, (real, blind)


def test_tversky_loss_weighs_missed_pixels_by_miss_weight() -> None:
    target = torch.zeros(1, 8, 8)
    target[0, :4] = 1.0  # 32 defect pixels
    miss = target.clone()
    miss[0, 3] = 0.0  # 8 of them missed
    spill = target.clone()
    spill[0, 4] = 1.0  # 8 normal pixels more
    assert tversky_loss(miss, target, 0.75) > tversky_loss(spill, target, 0.75)
    assert tversky_loss(miss, target, 0.25) < tversky_loss(spill, target, 0.25)
    assert tversky_loss(target, target, 0.75).item() == pytest.approx(0.0)
    assert tversky_loss(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8), 0.75).item() == pytest.approx(0.0)
    for mask in (miss, spill):  # w = 0.5 is dice up to the smoothing
        assert tversky_loss(mask, target, 0.5).item() == pytest.approx(soft_dice_loss(mask, target).item(), abs=0.01)
