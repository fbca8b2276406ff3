"""The offline `tiny` profile factory: synthetic defects, CLIP pretraining, SAM training, the recipe
and the cached build behind `python -m model_store make-tiny`. Not part of the ClipSAM method;
it exists because pretrained weights cannot be downloaded where this project is built and tested.
"""
from .build import make_tiny
from .recipe import TinyRecipe, validation_categories

__all__ = ["TinyRecipe", "make_tiny", "validation_categories"]
