"""The two model stages as Beam `ModelHandler`s, used with `RunInference`.

A handler only knows how to load its model from the model store and run one batch (the model
math is in `clipsam`); batching, model sharing across processes and retries are Beam's
business. Each handler keeps only the store URL, profile and settings, so nothing heavy is
pickled into the job graph; the model is built in `load_model` on the worker, once per process
(or once per machine with `model_copies`/`large_model`).

One bad image must not fail its batch-mates: when a batch raises, each element is retried
alone and the ones that still fail come out as `Failure`s.
"""
from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from clipsam.stage1 import RoughMapper, RoughResult
from clipsam.stage2 import MMRRefiner, Prediction

from inputs.elements import STAGE_CLIP, STAGE_SAM, Failure, ImageElement
from .progress import NAMESPACE, ProgressLog

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """Where a stage's model comes from, and how it runs (picklable, small)."""

    model_store: str
    profile: str
    device: Optional[str] = None  # None: CUDA when available, else CPU
    overrides: Optional[dict[str, dict[str, Any]]] = None  # ClipSAMConfig sections, e.g. {"mmr": {...}}
    threads: int = 0  # torch CPU threads of the process that loads the model; 0: torch's default


def _failure(element: ImageElement, stage: str, exc: BaseException) -> Failure:
    message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return Failure(element.source_uri, element.image_id, stage, type(exc).__name__, message[:2000])


def run_isolated(
    batch: Sequence[Any], run: Callable[[Sequence[Any]], list[Any]], element_of: Callable[[Any], ImageElement], stage: str
) -> list[Any]:
    """`run(batch)`, or, if it raises, `run([x])` for each x; per-element errors become Failures."""
    try:
        return run(batch)
    except Exception as exc:  # a batch error: find out which element(s) caused it
        if len(batch) == 1:
            LOG.warning("%s failed for %s: %s", stage, element_of(batch[0]).source_uri, exc)
            return [_failure(element_of(batch[0]), stage, exc)]
        LOG.warning("%s failed on a batch of %d (%s); retrying one by one", stage, len(batch), exc)
    outputs = []
    for item in batch:
        try:
            outputs.extend(run([item]))
        except Exception as exc:
            LOG.warning("%s failed for %s: %s", stage, element_of(item).source_uri, exc)
            outputs.append(_failure(element_of(item), stage, exc))
    return outputs


class Stage2Input(NamedTuple):
    """What stage 2 takes per image: the decoded element and its stage-1 result."""

    element: ImageElement
    rough: RoughResult


SLOT_PIXELS = 4 * 2**20  # an image takes one batch slot per started 4 MiP


def batch_slots(item: ImageElement | Stage2Input) -> int:
    """How many of a batch's `--batch_size` slots an image takes (Beam's `element_size_fn`): one
    per started SLOT_PIXELS, so a batch of line-scan frames holds a bounded number of pixels
    (a 16000 × 2048 frame fills a batch of 8 alone) while images of up to 4 MiP batch as
    `--batch_size` says."""
    element = item.element if isinstance(item, Stage2Input) else item
    height, width = element.frame_size
    return max(1, -(-height * width // SLOT_PIXELS))


class Scored(NamedTuple):
    """What stage 2 gives per image: the decoded element and ClipSAM's prediction."""

    element: ImageElement
    prediction: Prediction


class StageHandler(ModelHandler):
    """What the two stage handlers share: the model spec, per-element isolation of failures,
    byte accounting and a metrics namespace. Subclasses say how to load their model, how to run
    it on a batch, and which ImageElement an input is."""

    stage = ""

    def __init__(self, spec: ModelSpec, **batching_and_sharing: Any) -> None:
        super().__init__(**batching_and_sharing)
        self.spec = spec

    def element_of(self, item: Any) -> ImageElement:
        return item

    def use_threads(self) -> None:
        """Set the process's torch CPU threads (`ModelSpec.threads`) before loading: several SDK
        processes on one machine, each with torch's default of one thread per core, oversubscribe
        the cores (docs/decisions.md, "Beam and runners")."""
        import torch

        if self.spec.threads > 0 and torch.get_num_threads() != self.spec.threads:
            torch.set_num_threads(self.spec.threads)

    def predict(self, model: Any, items: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

    def run_inference(self, batch: Sequence[Any], model: Any,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        outputs = run_isolated(batch, lambda items: self.predict(model, items), self.element_of, self.stage)
        return [PredictionResult(self.element_of(item), out) for item, out in zip(batch, outputs)]

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return sum(self.element_of(item).image.nbytes for item in batch)

    def get_metrics_namespace(self) -> str:
        return f"{NAMESPACE}_{self.stage}"


class Stage1Handler(StageHandler):
    """Stage 1: CLIP + UMCI. Input ImageElement; inference is a RoughResult or a Failure."""

    stage = STAGE_CLIP

    def load_model(self) -> RoughMapper:
        from model_store.loading import load_stage1

        self.use_threads()
        return load_stage1(self.spec.model_store, self.spec.profile, self.spec.device, overrides=self.spec.overrides)[0]

    def predict(self, model: RoughMapper, items: Sequence[ImageElement]) -> list[RoughResult]:
        return model([e.image for e in items], [e.category for e in items])


class Stage2Handler(StageHandler):
    """Stage 2: SAM + MMR. Input Stage2Input; inference is a Prediction or a Failure.

    Counts the images that went through SAM's image encoder (`sam_encoder_images`), so a run can
    show the encoder ran only for images with prompts.
    """

    stage = STAGE_SAM

    def __init__(self, spec: ModelSpec, **batching_and_sharing: Any) -> None:
        super().__init__(spec, **batching_and_sharing)
        self._encoded = beam.metrics.Metrics.counter(NAMESPACE, "sam_encoder_images")

    def element_of(self, item: Stage2Input) -> ImageElement:
        return item.element

    def load_model(self) -> MMRRefiner:
        from model_store.loading import load_stage2

        self.use_threads()
        return load_stage2(self.spec.model_store, self.spec.profile, self.spec.device, overrides=self.spec.overrides)[0]

    def predict(self, model: MMRRefiner, items: Sequence[Stage2Input]) -> list[Prediction]:
        predictions = model([item.element.image for item in items], [item.rough for item in items],
                            [item.element.frame for item in items])
        # `sam_used` is set where SAM's encoder actually embedded the image. Counted from the
        # results because with model_copies the model is a proxy to another process.
        self._encoded.inc(sum(p.sam_used for p in predictions))
        return predictions


class CountResults(beam.DoFn):
    """PredictionResult(element, result or Failure) → `pair(element, result)` (Stage2Input after
    stage 1, Scored after stage 2), or the Failure as is (split later by
    `routing.split_failures`); counts both for progress."""

    def __init__(self, stage: str, pair: type) -> None:
        self.progress = ProgressLog(stage)
        self.pair = pair

    def process(self, result: PredictionResult) -> Iterable[Any]:
        if isinstance(result.inference, Failure):
            self.progress.failed()
            yield result.inference
        else:
            self.progress.done()
            yield self.pair(result.example, result.inference)
