"""Input reading without Beam: layouts and listing, decoding, tar samples, elements, training data.

Shared by the pipeline's DoFns (`transforms.read`) and UMCI training (`pipeline.train_umci`), so
both see the same image ids, ground-truth rules and error types.
"""
from .decode import DecodeError
from .elements import Failure, ImageElement, make_image_id
from .layouts import InputUnit, Listing, list_inputs, scan_inputs
from .reader import DecodeLimits, read_unit

__all__ = ["DecodeError", "DecodeLimits", "Failure", "ImageElement", "InputUnit", "Listing", "list_inputs",
           "make_image_id", "read_unit", "scan_inputs"]
