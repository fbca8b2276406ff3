"""Beam glue: DoFns, PTransforms and model handlers that run ClipSAM over a collection of inputs."""
from .accounting import LostRows, LostUnits
from .evaluate import EvaluatePerCategory
from .presentation import Present, RunAggregates
from .read import ReadImages
from .records import FAILURE_SCHEMA, RECORD_SCHEMA, ToRecord
from .skip_scored import SkipScored
from .stages import ModelSpec, Stage1Handler, Stage2Handler
from .write import ListWrittenFiles, WriteFileShards, WriteParquetShards

__all__ = ["EvaluatePerCategory", "FAILURE_SCHEMA", "ListWrittenFiles", "LostRows", "LostUnits", "ModelSpec",
           "Present", "RECORD_SCHEMA", "ReadImages", "RunAggregates", "SkipScored", "Stage1Handler", "Stage2Handler",
           "ToRecord", "WriteFileShards", "WriteParquetShards"]
