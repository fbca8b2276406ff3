"""Text side of ClipSAM: a fixed compositional prompt ensemble per category (DESIGN §4.1).

Each category gets one 2×D matrix T: row 0 is the mean "normal" sentence embedding, row 1 the
mean "abnormal" one, both L2-normalised. The ensemble is fixed text, not learned, so T depends
only on the CLIP text tower and the category name and is computed once per category per worker.
"""
from __future__ import annotations

import threading
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

NORMAL_STATES: tuple[str, ...] = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ABNORMAL_STATES: tuple[str, ...] = (
    "damaged {}",
    "broken {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)
PHOTO_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a low resolution photo of the {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a photo of my {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a photo of one {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of a large {}.",
    "a blurry photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "a dark photo of a {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)
UNKNOWN_CATEGORY_PHRASE = "object"


def class_phrase(category: str | None) -> str:
    """The noun phrase used for a category: `metal_nut` → "metal nut"; empty/unknown → "object"."""
    if not category:
        return UNKNOWN_CATEGORY_PHRASE
    phrase = " ".join(category.replace("_", " ").split())
    return phrase or UNKNOWN_CATEGORY_PHRASE


def ensemble_sentences(category: str | None) -> tuple[list[str], list[str]]:
    """All normal and all abnormal sentences for a category (states × templates)."""
    noun = class_phrase(category)

    def expand(states: Sequence[str]) -> list[str]:
        return [t.format(s.format(noun)) for s in states for t in PHOTO_TEMPLATES]

    return expand(NORMAL_STATES), expand(ABNORMAL_STATES)


@torch.no_grad()
def text_matrix(
    encode_text: Callable[[torch.Tensor], torch.Tensor],
    tokenize: Callable[[list[str]], torch.Tensor],
    category: str | None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """T ∈ R^{2×D} for one category: encode, L2-normalise, average per state, L2-normalise.

    encode_text: CLIP's text tower (tokens [N, ctx] → embeddings [N, D]).
    Returns float32 [2, D] on `device`, row 0 normal, row 1 abnormal.
    """
    rows = []
    for sentences in ensemble_sentences(category):
        emb = encode_text(tokenize(sentences).to(device)).float()
        mean = F.normalize(emb, dim=-1).mean(dim=0)
        rows.append(F.normalize(mean, dim=-1))
    return torch.stack(rows, dim=0)


class TextMatrixCache:
    """Per-category cache of T, so each category's ensemble is encoded once per process.

    Thread-safe: Beam runs several DoFn threads per worker process over one model.
    """

    def __init__(
        self,
        encode_text: Callable[[torch.Tensor], torch.Tensor],
        tokenize: Callable[[list[str]], torch.Tensor],
        device: torch.device | str = "cpu",
    ) -> None:
        self._encode_text = encode_text
        self._tokenize = tokenize
        self._device = device
        self._cache: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()
        self.encodings = 0  # how many categories were actually encoded (for tests and logs)

    def get(self, category: str | None) -> torch.Tensor:
        key = class_phrase(category)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = text_matrix(self._encode_text, self._tokenize, category, self._device)
                self.encodings += 1
            return self._cache[key]

    def stack(self, categories: Sequence[str | None]) -> torch.Tensor:
        """T for each element of a batch: [B, 2, D]."""
        return torch.stack([self.get(c) for c in categories], dim=0)
