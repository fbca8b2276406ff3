"""Beam glue: DoFns, PTransforms and model handlers that run ClipSAM over a collection of inputs."""
from .evaluate import EvaluatePerCategory
from .read import ReadImages
from .records import FAILURE_SCHEMA, RECORD_SCHEMA, ToRecord
from .stages import ModelSpec, Stage1Handler, Stage2Handler
from .write import ListWrittenFiles, WriteParquetShards

__all__ = ["EvaluatePerCategory", "FAILURE_SCHEMA", "ModelSpec", "RECORD_SCHEMA", "ReadImages", "Stage1Handler",
           "Stage2Handler", "ToRecord", "WriteParquetShards", "ListWrittenFiles"]
