"""``python -m flare_ray.predict MODEL --input FILE --output FILE``: use the winner.

Loads the adapter of a trial (a registered model, ``name`` or ``name/version``, or an MLflow run id) with
its recorded config, and predicts on new target-language text. Bad input (an unknown file type, a missing
column, an unknown model) exits with status 2 and one line naming the file and the column, before any
model is loaded. The work is :mod:`flare_ray.predict`.
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
        "  python -m flare_ray.predict quickstart-nusax-jav --input new.csv --output predicted.csv",
        "  python -m flare_ray.predict rank-nusax-jav/3 --input new.jsonl --output out.jsonl \\",
        "      --tracking-uri sqlite:///outputs/mlflow.db --mt-model facebook/nllb-200-distilled-600M",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flare_ray.predict",
        description=DESCRIPTION,
        epilog=_columns_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="registered model NAME (latest version) or NAME/VERSION, or an MLflow run id")
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
    return p


def tracking_uri(explicit: str | None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else the sweeps' default local store."""
    return (
        explicit
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{Path('outputs/mlflow.db').resolve().as_posix()}"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the console: one line at the end
    from mlflow.exceptions import MlflowException
    from pydantic import ValidationError

    from flare_ray.experiment import ExperimentConfig
    from flare_ray.predict.adapters import fetch_adapter
    from flare_ray.predict.english import translation_settings
    from flare_ray.predict.predictor import plan_input, predict
    from flare_ray.predict.tables import PREDICTION_COLUMN, PredictError, read_rows, table_format, write_rows
    from flare_ray.secrets import redact
    from flare_ray.training.evaluate import TRIAL_CONFIG_NAME

    with tempfile.TemporaryDirectory(prefix="flare-ray-predict-") as tmp:
        try:
            table_format(args.output)
            rows = read_rows(args.input)
            adapter = fetch_adapter(tracking_uri(args.tracking_uri), args.model, Path(tmp))
            try:
                experiment = ExperimentConfig.model_validate(adapter.record["experiment"])
                language = adapter.record["language"]
            except (ValidationError, KeyError, TypeError) as err:
                first = (str(err).splitlines() or [repr(err)])[0]
                raise PredictError(f"{args.model}: its {TRIAL_CONFIG_NAME} is no valid trial record: {first}") from None
            plan = plan_input(experiment, language, rows, args.input)
            if PREDICTION_COLUMN in rows.columns:
                raise PredictError(f"{args.input}: column {PREDICTION_COLUMN!r} exists; the output adds it")
        except PredictError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except MlflowException as err:  # its message may hold the tracking URI: shown without credentials
            print(f"error: MLflow at {redact(tracking_uri(args.tracking_uri))}: {redact(str(err))}", file=sys.stderr)
            return 1
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
        result = predict(experiment, language, adapter.folder, rows, translation=settings, where=args.input)
    write_rows(rows.assign(**{PREDICTION_COLUMN: result.predictions}), args.output)
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
    return 0
