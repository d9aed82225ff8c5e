"""Command line: ``flare-ray translate CONFIG.yaml [--dry-run] [--force] [--verbose]`` (also ``python -m flare_ray.translate``)."""

from __future__ import annotations

import argparse
import logging
import sys

from flare_ray.languages import FALLBACKS, nllb_language
from flare_ray.tasks import TASKS, TaskDataError
from flare_ray.translate.config import ConfigError, describe_keys, load_config

DESCRIPTION = """\
Translate a task's splits with an NLLB-200 model (greedy decoding) as a Ray Data
job: train and validation from English into the task language (the target_*
columns, and target_answers for QA), test from the gold target side into English
(source_*). QA answers of train and validation travel through translation
between markers (EasyProject); records whose markers are lost are dropped and
counted. QA test contexts carry markers too, as the authors': the gold answer is
projected into English (source_answers, which translate-test is scored against);
test records whose markers are lost are kept with empty source_answers.
Each split is written as parquet with a provenance JSON beside it; a split whose
model, languages, decoding settings and inputs are unchanged is reused without
loading the model. Ray: connects to the cluster at RAY_ADDRESS when it is set,
else starts a local Ray; actors use GPUs when the cluster has them."""

EXAMPLE = """\
examples:
  flare-ray translate translate_jav.yaml --dry-run   # check the config and the data, say what would be made
  flare-ray translate translate_jav.yaml             # translate (or reuse) every role
  flare-ray translate translate_jav.yaml --force     # translate every role again

translate_jav.yaml:
  task: {name: nusax, language: jav}
  mt_dir: outputs/mt
  model: facebook/nllb-200-distilled-600M
  roles: [train, validation, test]
  batch_size: 32

output: <mt_dir>/<task>/<language>/<role>.parquet and <role>.provenance.json; train on it with
the task's 'mt' recipe (TaskConfig(splits={"train": "mt", ...}, mt_dir=<mt_dir>))."""


def _languages_help() -> str:
    lines = ["languages (task code: NLLB-200 code; * marks a fallback):"]
    for name, task in TASKS.items():
        codes = [nllb_language(lang) for lang in sorted({*task.languages, *(task.hub_languages or {})})]
        lines.append(f"  {name}: " + ", ".join(f"{c.language} {c.code}{'*' if c.fallback else ''}" for c in codes))
    lines += [f"  * {lang}: {reason}" for lang, (_, reason) in FALLBACKS.items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flare-ray translate",
        description=DESCRIPTION,
        epilog=f"configuration keys (YAML):\n{describe_keys()}\n\n{_languages_help()}\n\n{EXAMPLE}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML configuration file (keys below)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the configuration and the data, say what would be translated or reused, and exit "
        "(starts no Ray, loads no model)",
    )
    parser.add_argument(
        "--force", action="store_true", help="translate every role again, even where a cached split matches"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show every library's output on the console (and the job's debug messages)",
    )
    return parser


def main(argv: list[str] | None = None):
    """Run the pipeline; bad input exits with one error message (status 2) before any model is loaded."""
    args = build_parser().parse_args(argv)
    # The job's progress (INFO) always; with --verbose its DEBUG messages and every library's INFO too.
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if args.verbose else logging.WARNING,
    )
    logging.getLogger("flare_ray").setLevel(logging.DEBUG if args.verbose else logging.INFO)

    try:
        config = load_config(args.config)
        from flare_ray.translate.pipeline import run  # after the config is read: --help and bad configs stay quick

        results = run(config, force=args.force, check=args.dry_run)
    except (ConfigError, TaskDataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    for result in results:
        prov = result.provenance
        how = "reused (cached)" if result.cached else "translated"
        print(f"{result.role}: {how}: {result.path} ({prov['records_out']} of {prov['records_in']} records)")
    return results
