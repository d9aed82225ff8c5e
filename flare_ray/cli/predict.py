"""``python -m flare_ray.predict MODEL --input FILE --output FILE``: use the winner.

Loads the adapter of a trial (a registered model, ``name`` or ``name/version``, or an MLflow run id) with
its recorded config, and predicts on new target-language text (``--scores``: and how sure). Bad input (an
unknown file type, a missing column, an unknown model, a record this version cannot read, a model it names
that is not at hand, an English side the method reads that is neither given nor translatable here) exits
with status 2 and one line naming the file, column or option, before any model library is imported: only
the trial's ``trial_config.json`` is downloaded for these checks (:mod:`flare_ray.predict.inputs`). Then,
as ``tune`` does, the libraries' output goes to a log file (``<output>.log``, its path printed) and the
console gets two lines; ``--verbose`` shows everything. ``--dry-run`` stops after the checks. The work is
:mod:`flare_ray.predict`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

DESCRIPTION = """\
Predict with a trial's adapter, found in MLflow: a registered model (NAME, the latest version, or
NAME/VERSION; the sweeps register the best trial per language as <sweep>-<task>-<language>) or the run id
of any trial. The adapter is loaded with the trial's recorded config (trial_config.json: base model,
stage-1 model, method, task, language) as the trial scored its test set, and predicts one label (or answer)
per input row. The output is the input rows plus a 'prediction' column."""


def _columns_help() -> str:
    from flare_ray.tasks import TASKS  # not flare_ray.predict's modules: --help stays fast

    lines = ["input columns (by task; other columns are kept and passed through):"]
    for name, task in TASKS.items():
        targets, sources = task.text_fields, [f"source_{f}" for f in task.text_fields]
        lines.append(f"  {name}: {', '.join(targets)}; English side (optional): {', '.join(sources)}")
    lines += [
        "",
        "The methods that read an English source (flare, xmixup, input_fusion, translate_test) take it from the",
        "source_<field> columns; when the input has none, it is translated from the target language with NLLB-200",
        "(the project's translation job on Ray Data: greedy, batched; each text cached in --translation-cache).",
        "By default the model and decoding settings are those the run's own test split was translated with",
        "(task.splits.test: mt), else facebook/nllb-200-3.3B. flare_mt, lora and zero_shot read the target only.",
        "",
        "formats (by extension): .jsonl (one JSON object per line), .csv, .tsv (a header row; every value is text).",
        "",
        "examples:",
        "  flare-ray predict quickstart-nusax-jav --input new.csv --output predicted.csv",
        "  flare-ray predict rank-nusax-jav/3 --input new.jsonl --output out.jsonl \\",
        "      --tracking-uri sqlite:///outputs/mlflow.db --mt-model facebook/nllb-200-distilled-600M",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flare-ray predict",
        description=DESCRIPTION,
        epilog=_columns_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model",
        help="a registered model: NAME (its latest version) or NAME/VERSION (also models:/NAME/VERSION); or the "
        "MLflow run id of any trial (also runs:/RUN_ID)",
    )
    p.add_argument("--input", type=Path, required=True, help="the rows to predict: .jsonl, .csv or .tsv")
    p.add_argument(
        "--output", type=Path, required=True, help="where to write the rows with 'prediction': .jsonl, .csv or .tsv"
    )
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite:///outputs/mlflow.db"
    )
    p.add_argument(
        "--mt-model",
        help="NLLB-200 model (hub id, folder, or tiny:m2m_100) for a missing English side; "
        "default: the one the run's test split was translated with, else facebook/nllb-200-3.3B",
    )
    p.add_argument(
        "--mt-max-length",
        type=int,
        help="tokens per text and per translation (default: as the run's test split, else 512)",
    )
    p.add_argument(
        "--mt-batch-size", type=int, help="texts per translation batch (default: as the run's test split, else 16)"
    )
    p.add_argument(
        "--translation-cache",
        type=Path,
        default=Path("outputs/translations"),
        help="folder of the cached translations (default outputs/translations)",
    )
    p.add_argument(
        "--scores",
        action="store_true",
        help="also say how sure: a p_<label> column per label (classification: the probabilities, summing to 1) "
        "or a 'score' column (extractive QA: the answer's probability among the context's candidate spans)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the input, the trial's record and the models it needs (as before predicting); load and "
        "write nothing",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also show every library's output on the console (always in the log file, <output>.log)",
    )
    return p


def tracking_uri(explicit: str | None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else the sweeps' default local store."""
    return (
        explicit
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{Path('outputs/mlflow.db').resolve().as_posix()}"
    )


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 written; 2 bad input (one line, before any model loads); 1 MLflow or the prediction
    failed (one line; the traceback is in the log file)."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the console: one line at the end
    from flare_ray.predict.tables import PredictError

    with tempfile.TemporaryDirectory(prefix="flare-ray-predict-") as tmp:
        try:
            checked = _check(args, Path(tmp))
        except PredictError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if isinstance(checked, int):
            return checked
        if args.dry_run:
            print(_plan_line(*checked))
            return 0
        return _predict(args, Path(tmp), *checked)


def _plan_line(rows, adapter, experiment, language, plan, settings) -> str:
    """What a dry run found: the rows, the trial, and where the English side would come from."""
    english = ""
    if plan.needs_english:
        english = (
            f"; English side from {', '.join(plan.source_columns)}"
            if plan.sources_given
            else f"; English side to translate with {settings.model}"
        )
    return (
        f"dry run: {len(rows)} row{'s' if len(rows) != 1 else ''} to predict with {adapter.describe()} "
        f"({experiment.method.kind}, "
        f"{experiment.task.name}/{language}{english}); nothing loaded or written"
    )


def _check(args, tmp: Path) -> tuple | int:
    """Everything that can be checked before a model loads (light imports only: no torch, no transformers):
    the files, the trial's record (downloaded alone), its columns, the models it names and the NLLB model that
    would make a missing English side. :class:`PredictError` for bad input; 1 for an MLflow error."""
    from mlflow.exceptions import MlflowException
    from pydantic import ValidationError

    from flare_ray.experiment import ExperimentConfig
    from flare_ray.predict.adapters import fetch_record
    from flare_ray.predict.inputs import (
        download_note,
        english_side_problem,
        model_problems,
        mt_model_problem,
        plan_input,
        scores_problem,
        translation_settings,
    )
    from flare_ray.predict.tables import PREDICTION_COLUMN, PredictError, read_rows, table_format
    from flare_ray.secrets import redact
    from flare_ray.training.checkpoints import TRIAL_CONFIG_NAME

    try:
        table_format(args.output)
        rows = read_rows(args.input)
        mt_model_problem(args.mt_model)
        adapter = fetch_record(tracking_uri(args.tracking_uri), args.model, tmp)
        try:
            experiment = ExperimentConfig.model_validate(adapter.record["experiment"])
            language = adapter.record["language"]
        except ValidationError as err:  # e.g. written by another version of flare_ray: its first problem
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "experiment"
            raise PredictError(
                f"{args.model}: its {TRIAL_CONFIG_NAME} is no trial record this flare_ray reads: experiment.{where}: "
                f"{first['msg']} ({err.error_count()} problem{'s' if err.error_count() > 1 else ''}; written by "
                "another version of flare_ray?)"
            ) from None
        except (KeyError, TypeError) as err:
            what = f"no key {err}" if isinstance(err, KeyError) else "not a JSON object"
            raise PredictError(
                f"{args.model}: its {TRIAL_CONFIG_NAME} is no trial record: {what} (expected the keys 'experiment' "
                "and 'language')"
            ) from None
        plan = plan_input(experiment, language, rows, args.input)
        if PREDICTION_COLUMN in rows.columns:
            raise PredictError(f"{args.input}: column {PREDICTION_COLUMN!r} exists; the output adds it")
        if args.scores:
            scores_problem(plan, rows, args.input)
        settings = None
        if plan.translate:
            settings = translation_settings(
                experiment,
                language,
                model=args.mt_model,
                max_length=args.mt_max_length,
                batch_size=args.mt_batch_size,
                cache_dir=args.translation_cache,
            )
            english_side_problem(plan, experiment, settings, args.input)
        model_problems(experiment, args.model)
        note = download_note(plan, settings)
        if note:
            print(note, file=sys.stderr)
    except MlflowException as err:  # its message may hold the tracking URI: shown without credentials
        print(f"error: MLflow at {redact(tracking_uri(args.tracking_uri))}: {redact(str(err))}", file=sys.stderr)
        return 1
    return rows, adapter, experiment, language, plan, settings


def _predict(args, tmp: Path, rows, adapter, experiment, language, plan, settings) -> int:
    """Load the adapter and predict, the libraries' output in the log file (``<output>.log``) unless
    ``--verbose``; write the rows with their predictions (and scores)."""
    import logging

    from flare_ray.logs import log_to_file, quiet_libraries, stop_logging_to_file
    from flare_ray.predict.tables import PREDICTION_COLUMN, PredictError, write_rows
    from flare_ray.secrets import redact

    log = log_to_file(Path(args.output).with_suffix(".log"), verbose=args.verbose)
    bars: dict[str, bool] = {}  # the progress bars of transformers and datasets, as they were
    try:
        from flare_ray.predict.adapters import download_weights
        from flare_ray.predict.predictor import predict

        quiet_libraries()  # those that set up console handlers of their own when imported
        bars = _progress_bars(args.verbose)
        download_weights(adapter, tmp)
        result = predict(
            experiment,
            language,
            adapter.folder,
            rows,
            translation=settings,
            where=args.input,
            scores=args.scores,
            verbose=args.verbose,
        )
    except PredictError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a library's: one line here, its traceback in the log
        logging.getLogger("flare_ray.predict").info("predict failed", exc_info=True)
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"error: {type(err).__name__}: {redact(first)} (the traceback: {log})", file=sys.stderr)
        return 1
    finally:
        stop_logging_to_file()
        if bars:
            _progress_bars(bars)
    table = rows.assign(**{PREDICTION_COLUMN: result.predictions})
    if result.scores is not None:
        table = table.join(result.scores.set_axis(rows.index))
    write_rows(table, args.output)
    how = ""
    if result.translation is not None:
        t = result.translation
        how = (
            f"; English side translated by {settings.model}: {t.translated} of {t.segments} texts new, "
            f"{t.segments - t.translated} from the cache {t.path}"
        )
    elif plan.sources_given and plan.needs_english:
        how = f"; English side from {', '.join(plan.source_columns)}"
    print(
        f"wrote {len(rows)} predictions to {args.output} ({adapter.describe()}: {experiment.method.kind}, "
        f"{experiment.task.name}/{language}{how})"
    )
    print(f"logs: {log}")
    return 0


def _progress_bars(enabled: bool | dict[str, bool]) -> dict[str, bool]:
    """Turn the progress bars of transformers ("Loading weights") and datasets on or off (``enabled``: both, or
    each by name); returns how they were, to turn them back."""
    import datasets
    from transformers.utils import logging as transformers_logging

    libraries = {
        "transformers": (
            transformers_logging.is_progress_bar_enabled,
            transformers_logging.enable_progress_bar,
            transformers_logging.disable_progress_bar,
        ),
        "datasets": (datasets.is_progress_bar_enabled, datasets.enable_progress_bars, datasets.disable_progress_bars),
    }
    before = {name: is_on() for name, (is_on, _, _) in libraries.items()}
    for name, (_, on, off) in libraries.items():
        (on if (enabled if isinstance(enabled, bool) else enabled[name]) else off)()
    return before
