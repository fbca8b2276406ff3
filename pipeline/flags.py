"""The command line as a whole: `--help`, unknown flags, and the runner, checked before any work.

Beam's `PipelineOptions` only warns about flags it does not know and drops them, so a misspelt
`--mask_treshold=0.3` ran with the default threshold and `--runer=DataflowRunner` ran a night's
job on the launching machine. Here every argument must be a flag of this project, of Beam, or of
the chosen runner's own options class; anything else is an `OptionError` naming the closest known
flag.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
from typing import Sequence

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from .options import ClipSAMOptions, OptionError

BEAM_FLAG_EXAMPLES = ("--runner", "--project", "--region", "--temp_location", "--staging_location",
                      "--sdk_container_image", "--sdk_location", "--machine_type", "--dataflow_service_options",
                      "--experiments", "--direct_running_mode", "--direct_num_workers", "--setup_file")


def flag_value(argv: Sequence[str], name: str) -> str | None:
    """The last value given for `--name` (as `--name=v` or `--name v`), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _register_runner_options(runner: str | None) -> None:
    """Import a runner given as a dotted path, so its own PipelineOptions subclass (e.g. the
    DaskRunner's `--dask_client_address`) is known when the flags are checked."""
    if runner and "." in runner:
        module = runner.rpartition(".")[0]
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise OptionError(f"--runner: cannot import {module!r} for runner {runner!r}: {exc}") from None


def _all_options_parser() -> argparse.ArgumentParser:
    """An argparse parser knowing every flag of every loaded PipelineOptions subclass (ours included)."""
    parser = _BeamArgumentParser(allow_abbrev=False, add_help=False)
    seen: set[str] = set()
    pending = list(PipelineOptions.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if f"{cls.__module__}.{cls.__qualname__}" in seen:
            continue
        seen.add(f"{cls.__module__}.{cls.__qualname__}")
        try:
            cls._add_argparse_args(parser)  # noqa: SLF001 (Beam's own registration hook)
        except argparse.ArgumentError:
            continue  # a class re-registering flags another class already defined
    return parser


def _known_flags(parser: argparse.ArgumentParser) -> list[str]:
    return sorted({s for action in parser._actions for s in action.option_strings if s.startswith("--")})


def check_known_flags(argv: Sequence[str]) -> None:
    """OptionError for the first argument that no options class knows, naming the closest known flag."""
    _register_runner_options(flag_value(argv, "runner"))
    parser = _all_options_parser()
    _, unknown = parser.parse_known_args(list(argv))
    if not unknown:
        return
    bad = unknown[0]
    name = bad.split("=", 1)[0]
    if not name.startswith("--"):
        raise OptionError(f"unexpected argument {bad!r}: every setting is a --flag=value (see --help)")
    close = difflib.get_close_matches(name, _known_flags(parser), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else "; see --help"
    raise OptionError(f"unknown flag {name}{hint}")


def check_runner(runner: str) -> None:
    """OptionError naming --runner when Beam cannot create that runner here (unknown name, or a
    runner whose extra packages are not installed, e.g. DataflowRunner without `.[gcp]`)."""
    from apache_beam.runners.runner import create_runner

    try:
        create_runner(runner)
    except ImportError as exc:
        extra = " (install the launcher with: pip install -e '.[gcp]')" if "Dataflow" in runner else ""
        raise OptionError(f"--runner={runner}: its packages are not installed: {exc}{extra}") from None
    except ValueError as exc:
        raise OptionError(f"--runner={runner}: {exc}") from None


def check_service_locations(beam_options: PipelineOptions, runner: str, graph_only: bool) -> None:
    """For a service runner (Dataflow): an invalid --temp_location / --staging_location is an
    OptionError, not a search for a default bucket over the network; with --graph_only, Beam's
    cloud-storage checks (bucket soft-delete policy) are skipped, so the graph builds offline."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions, TestOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
    from apache_beam.runners.runner import create_runner

    validator = PipelineOptionsValidator(beam_options, create_runner(runner))
    if not validator.is_service_runner():
        return
    cloud = beam_options.view_as(GoogleCloudOptions)
    for flag in ("temp_location", "staging_location"):
        if getattr(cloud, flag, None) is not None:
            errors = validator.validate_gcs_path(cloud, flag)
            if errors:
                raise OptionError(f"--{flag}: {errors[0]}")
    if cloud.temp_location is None and cloud.staging_location is None and graph_only:
        raise OptionError("--temp_location: required for a service runner (a gs://bucket/path the job may write)")
    if graph_only:
        beam_options.view_as(TestOptions).dry_run = True
        errors = validator.validate()  # what Beam checks when the pipeline is built, now as one line
        if errors:
            raise OptionError("Beam's checks of the runner flags failed: " + "; ".join(e.strip() for e in errors))


class _DefaultsFormatter(argparse.RawDescriptionHelpFormatter):
    """Help lines end with the default, unless the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or action.option_strings == ["-h", "--help"]:
            return text
        return f"{text} (default: %(default)s)"


def help_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The project's flags with their defaults, for `--help` (Beam's own flags pass through)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=_DefaultsFormatter,
        usage="%(prog)s --input=URL --output=URL --model_store=URL [flags] [Beam and runner flags]",
        epilog="Beam and runner flags pass through to Beam, e.g. " + ", ".join(BEAM_FLAG_EXAMPLES) + ". "
               "Without --runner the job runs on this machine (FnApiRunner). A flag that neither this "
               "program nor Beam knows is an error (exit 2).",
    )
    ClipSAMOptions._add_argparse_args(parser)  # noqa: SLF001 (Beam's own registration hook)
    return parser
