"""Input reading without Beam: layouts and listing, decoding, tar samples, elements, training data.

Shared by the pipeline's DoFns (`transforms.read`) and UMCI training (`pipeline.train_umci`), so
both see the same image ids, ground-truth rules and error types; `read_image` is the image reader
`model_store.load_clipsam` gives the notebook API (`clipsam.ClipSAM`), so a path predicted in a
notebook is read and decoded as the pipeline reads and decodes it.
"""
from .decode import DecodeError, read_image
from .elements import Failure, ImageElement, make_image_id
from .layouts import InputUnit, Listing, list_inputs, scan_inputs
from .reader import DecodeLimits, read_unit

__all__ = ["DecodeError", "DecodeLimits", "Failure", "ImageElement", "InputUnit", "Listing", "list_inputs",
           "make_image_id", "read_image", "read_unit", "scan_inputs"]
