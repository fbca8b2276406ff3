import pytest
import torch

from clipsam.config import UMCIConfig
from clipsam.umci import UMCI, TwoStepInteraction, UMCILayer, clip_image_score

CONFIG = UMCIConfig(vision_width=48, text_dim=32, num_layers=3, attn_dim=16, scales=(1, 3, 5))


def _inputs(batch, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = [torch.randn(batch, h, w, CONFIG.vision_width, generator=g) for _ in range(CONFIG.num_layers)]
    text = torch.randn(batch, 2, CONFIG.text_dim, generator=g)
    return tokens, text


@pytest.mark.parametrize("grid,out", [((7, 7), (112, 112)), ((16, 16), (256, 256)), ((10, 13), (90, 117))])
def test_output_shapes_and_range(grid, out):
    torch.manual_seed(0)
    model = UMCI(CONFIG)
    tokens, text = _inputs(2, *grid)
    with torch.no_grad():
        result = model(tokens, text, out)
    assert len(result.layer_probs) == CONFIG.num_layers
    for probs, log_probs in zip(result.layer_probs, result.layer_log_probs):
        assert probs.shape == log_probs.shape == (2, 2, *out)
        assert torch.allclose(probs.sum(dim=1), torch.ones(2, *out), atol=1e-5)
        assert torch.allclose(torch.logsumexp(log_probs, dim=1), torch.zeros(2, *out), atol=1e-5)
    assert result.rough_map.shape == (2, *out)
    assert float(result.rough_map.min()) >= 0.0 and float(result.rough_map.max()) <= 1.0
    expected = torch.stack([p[:, 1] for p in result.layer_probs]).mean(0)
    assert torch.allclose(result.rough_map, expected)


def test_shared_text_matrix_broadcasts():
    torch.manual_seed(0)
    model = UMCI(CONFIG)
    tokens, text = _inputs(3, 5, 5)
    a = model(tokens, text[0], (20, 20)).rough_map
    b = model(tokens, text[0:1].expand(3, -1, -1), (20, 20)).rough_map
    assert torch.allclose(a, b, atol=1e-6)


def test_strip_path_adds_row_and_column_terms():
    """With the interaction zeroed out, U[i, j] = R[i] + C[j] exactly (row/column means)."""
    layer = UMCILayer(CONFIG)
    for p in layer.strip.parameters():
        torch.nn.init.zeros_(p)
    v = torch.randn(1, 4, 6, CONFIG.text_dim)
    text = torch.randn(1, 2, CONFIG.text_dim)
    out = layer.strip_path(v, text)
    expected = v + v.mean(dim=2)[:, :, None] + v.mean(dim=1)[:, None]
    assert torch.allclose(out, expected, atol=1e-6)


def test_scale_path_k1_is_identity_pooling():
    layer = UMCILayer(UMCIConfig(vision_width=8, text_dim=8, num_layers=1, attn_dim=4, scales=(1,)))
    for p in layer.scale.parameters():
        torch.nn.init.zeros_(p)
    v = torch.randn(2, 3, 5, 8)
    assert torch.allclose(layer.scale_path(v, torch.randn(2, 2, 8)), v)


def test_scale_path_uses_every_window():
    layer = UMCILayer(UMCIConfig(vision_width=8, text_dim=8, num_layers=1, attn_dim=4, scales=(1, 3)))
    for p in layer.scale.parameters():
        torch.nn.init.zeros_(p)
    v = torch.zeros(1, 5, 5, 8)
    v[0, 2, 2] = 9.0
    out = layer.scale_path(v, torch.randn(1, 2, 8))
    # k=1 keeps the spike (9), k=3 spreads it to 1/9 of 9 over the 3x3 window; mean of the two.
    assert torch.allclose(out[0, 2, 2], torch.full((8,), (9.0 + 1.0) / 2))
    assert torch.allclose(out[0, 1, 1], torch.full((8,), 0.5))


def test_two_step_text_first_then_tokens():
    block = TwoStepInteraction(8, 4)
    tokens, text = torch.randn(1, 5, 8), torch.randn(1, 2, 8)
    out = block(tokens, text)
    updated_text = text + block.text_reads_tokens(text, tokens)
    assert torch.allclose(out, tokens + block.tokens_read_text(tokens, updated_text))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = UMCI(CONFIG)
    tokens, text = _inputs(2, 6, 6)
    model(tokens, text, (24, 24)).rough_map.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_wrong_layer_count_is_an_error():
    tokens, text = _inputs(1, 4, 4)
    with pytest.raises(ValueError, match="expects 3 tapped layers"):
        UMCI(CONFIG)(tokens[:2], text, (8, 8))


def test_clip_image_score_is_abnormal_softmax():
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert clip_image_score(torch.tensor([[0.0, 1.0]]), text, 100.0).item() > 0.999
    assert clip_image_score(torch.tensor([[1.0, 0.0]]), text, 100.0).item() < 1e-3
