import torch

from clipsam.prompts import ABNORMAL_STATES, NORMAL_STATES, PHOTO_TEMPLATES, TextMatrixCache, class_phrase, ensemble_sentences, text_matrix


def test_class_phrase_rules():
    assert class_phrase("metal_nut") == "metal nut"
    assert class_phrase("  pcb__1 ") == "pcb 1"
    assert class_phrase("") == "object"
    assert class_phrase(None) == "object"


def test_ensemble_is_states_times_templates():
    normal, abnormal = ensemble_sentences("metal_nut")
    assert len(normal) == len(NORMAL_STATES) * len(PHOTO_TEMPLATES) == 7 * 35
    assert len(abnormal) == len(ABNORMAL_STATES) * len(PHOTO_TEMPLATES) == 5 * 35
    assert "a photo of a flawless metal nut." in normal
    assert "a bad photo of the metal nut with defect." in abnormal


def _fake_tower():
    """A deterministic linear 'text tower' so the averaging arithmetic can be checked by hand."""
    table = torch.randn(1000, 8, generator=torch.Generator().manual_seed(0))

    def tokenize(sentences):
        return torch.tensor([[hash_word(w) for w in s.split()[:4]] + [0] * (4 - len(s.split()[:4])) for s in sentences])

    def encode(tokens):
        return table[tokens].sum(dim=1)

    return tokenize, encode


def hash_word(word: str) -> int:
    return sum(ord(c) * (i + 1) for i, c in enumerate(word)) % 999 + 1


def test_text_matrix_normalise_average_normalise():
    tokenize, encode = _fake_tower()
    t = text_matrix(encode, tokenize, "bottle")
    assert t.shape == (2, 8)
    assert torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-6)
    normal, _ = ensemble_sentences("bottle")
    emb = torch.nn.functional.normalize(encode(tokenize(normal)).float(), dim=-1).mean(0)
    assert torch.allclose(t[0], emb / emb.norm(), atol=1e-6)


def test_cache_encodes_each_category_once():
    tokenize, encode = _fake_tower()
    cache = TextMatrixCache(encode, tokenize)
    batch = cache.stack(["bottle", "screw", "bottle", None, "object"])
    assert batch.shape == (5, 2, 8)
    assert cache.encodings == 3  # bottle, screw, object (None → "object")
    assert torch.equal(batch[0], batch[2])
    assert torch.equal(batch[3], batch[4])


def test_real_clip_text_tower(tiny_model):
    cache = tiny_model.stage1.text
    t = cache.get("bottle")
    assert t.shape == (2, 64)
    assert torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(t[0], t[1])
