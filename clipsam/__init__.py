"""The ClipSAM method (arXiv 2401.12665) in torch/numpy: CLIP taps, UMCI, MMR, SAM adapter, metrics.

Nothing here knows about Beam or model stores; every algorithm runs on arrays.
"""
from .config import ClipSAMConfig, ClipTapConfig, MMRConfig, UMCIConfig
from .model import ClipSAM
from .stage1 import RoughMapper, RoughResult
from .stage2 import MMRRefiner, Prediction

__all__ = ["ClipSAM", "ClipSAMConfig", "ClipTapConfig", "MMRConfig", "MMRRefiner", "Prediction", "RoughMapper",
           "RoughResult", "UMCIConfig"]
