"""A report of one or more sweeps: the table (Markdown, CSV, LaTeX, HTML), the significance tests and the
figures with their captions.

:func:`build_report` reads everything from MLflow (:mod:`~flare_ray.report.records`), so it works on any
past sweep; :func:`log_report` puts the files on each sweep's parent run (``report/``), gives that run
a description, and adds each registered adapter's report row to its model version's description.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import pandas as pd

from flare_ray.significance import LEVEL, PROCEDURE, RESAMPLES, SEED
from flare_ray.tasks import TASKS
from flare_ray.tracking import mlflow_runs

from . import paper, plots
from .records import ReportError, SweepRecords, load_sweep
from .render import NOT_PAPER, html_page, latex, markdown, p_value, score
from .table import AVERAGE, Column, average_deviations, cells, named_trials, settings_differ

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

FILES = ("report.md", "report.csv", "report.html", "report.tex")


@dataclass
class Report:
    title: str
    sweeps: list[SweepRecords]
    table: pd.DataFrame  # one line per (row, column): see :func:`~flare_ray.report.table.cells`
    columns: list[Column]
    markdown: str  # the table alone
    notes: list[str]
    folder: Path
    figures: list[Path] = field(default_factory=list)
    published: str = ""  # the paper's matching cells as a Markdown table ("" where none matches)
    captions: dict[Path, str] = field(default_factory=dict)  # figure -> what it shows
    baseline: str | None = None  # the row (or method) the Δ columns compare with

    @property
    def files(self) -> list[Path]:
        return [self.folder / name for name in FILES] + self.figures

    def row_of(self, run_id: str) -> pd.Series | None:
        """The table line whose seeds include the run ``run_id``."""
        for _, line in self.table.iterrows():
            if isinstance(line.get("run_ids"), str) and run_id in json.loads(line["run_ids"]):
                return line
        return None


def baseline_of(sweeps: Sequence[SweepRecords], given: str | None = None) -> str | None:
    """The baseline row: ``given`` (``--baseline``), else the sweeps' ``report.baseline`` (one for all)."""
    if given:
        return given
    named = {(s.config.get("report") or {}).get("baseline") for s in sweeps} - {None}
    if len(named) > 1:
        raise ReportError(
            f"the sweeps name different baselines (report.baseline): {sorted(named)}; choose one with --baseline"
        )
    return named.pop() if named else None


def build_report(
    client: MlflowClient,
    references: Sequence[str],
    folder: Path,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    baseline: str | None = None,
) -> Report:
    """The report of the sweeps named (or whose parent run ids are) ``references``, written to ``folder``;
    ``baseline``: the row (its name or method) to give every other row's difference to, else the sweeps'
    ``report.baseline``. On a terminal, a progress bar on stderr follows its steps."""
    from tqdm.auto import tqdm

    progress = tqdm(total=4, desc="report", unit="step", leave=False, disable=None)
    progress.set_postfix_str("reading the sweeps from MLflow")
    sweeps = [load_sweep(client, ref) for ref in references]
    folder.mkdir(parents=True, exist_ok=True)
    progress.update()
    progress.set_postfix_str(f"the table and paired bootstrap ({resamples} resamples)")
    baseline = baseline_of(sweeps, baseline)
    table, columns = cells(sweeps, resamples, seed, baseline)
    progress.update()
    progress.set_postfix_str("figures")
    title = "Report: " + " + ".join(s.name for s in sweeps)
    notes = _notes(sweeps, table, columns, resamples, seed, baseline)
    report = Report(title, sweeps, table, columns, markdown(table, columns), notes, folder, baseline=baseline)

    languages = table[table["column"] != AVERAGE]
    by_run = {row.run_id: row._asdict() for s in sweeps for row in s.trials.itertuples()}
    captions = {
        plots.bars(languages, folder / "bars.png", title): plots.bars_caption(languages),
        plots.curves(languages, by_run, sweeps[0].metric, folder / "curves.png"): plots.curves_caption(
            sweeps[0].metric
        ),
    }
    trials, _ = named_trials(sweeps)
    for sweep in sweeps:
        captions.update({path: plots.grid_caption(sweep) for path in plots.grid_plot(sweep, trials, folder)})
        for language in sweep.languages:
            for path in plots.optuna_plots(sweep, language, folder):
                captions[path] = plots.optuna_caption(sweep, path)
    report.figures, report.captions = list(captions), captions
    progress.update()
    progress.set_postfix_str("writing")

    table.to_csv(folder / "report.csv", index=False)
    intro = _intro(sweeps)
    published = paper.paper_frame(table, columns, list(dict.fromkeys(table["row"])))
    report.published = "" if published is None else published.to_markdown(index=False)
    beside = [] if published is None else ["## The paper's numbers", report.published]
    figures = [f"![{f.name}]({f.name})\n\n*Figure {i}: {captions[f]}*" for i, f in enumerate(report.figures, 1)]
    (folder / "report.md").write_text(
        "\n\n".join([f"# {title}", *intro, report.markdown, *beside, *notes, *figures]) + "\n"
    )
    (folder / "report.tex").write_text(latex(table, columns, _caption(sweeps, notes)))
    (folder / "report.html").write_text(
        html_page(title, intro, table, columns, notes, report.figures, published, captions)
    )
    progress.update()
    progress.close()
    return report


def _caption(sweeps: list[SweepRecords], notes: list[str]) -> str:
    """The LaTeX table's caption: what a cell is, and the notes on the significance tests."""
    metrics = ", ".join(dict.fromkeys(f"test/{s.test_metric}" for s in sweeps))
    deviating = any(s.deviations(lang) for s in sweeps for lang in s.languages)
    return " ".join(
        [
            f"{metrics} on the gold target-language test split, mean ± std over seeds (n seeds); each row's "
            "configuration selected on the mean over seeds of the validation metric; bold: the best row of each "
            "column.",
            *(n for n in notes if n.startswith(("Δ vs", "p-values"))),
            *([f"{NOT_PAPER}: not the paper's setting (see the report's notes)."] if deviating else []),
        ]
    )


def _intro(sweeps: list[SweepRecords]) -> list[str]:
    out = []
    for s in sweeps:
        out.append(
            f"Sweep {s.name} (MLflow parent run {s.parent_run_id}): {s.task}, model "
            f"{s.config['model']['name_or_path']}, {len(s.trials)} trials; each row's configuration selected on "
            f"the mean over seeds of {s.metric} (the validation split); cells: test/{s.test_metric} on the gold "
            "target-language test split, mean ± std over seeds (n seeds)."
        )
    return out


def _notes(
    sweeps: list[SweepRecords],
    table: pd.DataFrame,
    columns: list[Column],
    resamples: int,
    seed: int,
    baseline: str | None = None,
) -> list[str]:
    notes = ["Bold: the best row of each column. Column p: " + PROCEDURE.format(resamples=resamples, seed=seed) + "."]
    if baseline is not None:
        notes.append(
            f"Δ vs {baseline}: the row's test score minus {baseline}'s, on the test examples both were scored on "
            f"(each the mean over its seeds), in brackets its paired-bootstrap 95 % interval (the 2.5th and 97.5th "
            f"percentiles over the same {resamples} resamples); p vs {baseline}: two-sided, of no difference."
            + (
                f" Each row is compared with the {baseline} row of its own grid cell."
                if "baseline" in table and table["baseline"].dropna().nunique() > 1
                else ""
            )
        )
    average = table[table["column"] == AVERAGE]
    if average["p_value"].notna().any() or ("delta" in average and average["delta"].notna().any()):
        notes.append(_average_note(resamples))
    if table["p_value"].notna().any():
        notes.append(_holm_note(table, baseline is not None))
    for column in columns:
        if column.deviations:
            notes.append(
                f"{NOT_PAPER} {column.name}: not the paper's setting:" + "".join(f"\n- {d}" for d in column.deviations)
            )
    if average_deviations(columns):
        why = "over languages in different settings" if settings_differ(columns) else "not the paper's setting"
        notes.append(f"{NOT_PAPER} {AVERAGE}: {why}:" + "".join(f"\n- {d}" for d in average_deviations(columns)))
    notes += translate_test_notes(sweeps, table)
    notes.append(paper.note(table))
    return list(dict.fromkeys(notes))  # sweeps side by side may bring the same column (and note) twice


def _average_note(resamples: int) -> str:
    """How the average column's p and Δ are tested: stratified by language."""
    return (
        f"p-values and Δ of the {AVERAGE} column: a stratified paired bootstrap over the test examples, {resamples} "
        "resamples, each drawing every language's examples with replacement within that language (the same draws "
        "for both rows and all their seeds); on each, a row's score is its metric per language (seeds pooled) "
        "averaged over the languages; p and the 95 % interval then as in a language's column."
    )


def _holm_note(table: pd.DataFrame, with_baseline: bool) -> str:
    """One line under the table: the p-values are Holm-corrected, over how many comparisons per column (the
    average column's included)."""
    counts = {int(n) for n in table.groupby("column")["p_value"].count() if n}
    n = counts.pop() if len(counts) == 1 else None
    over = "the comparisons" if n is None else "the 1 comparison" if n == 1 else f"the {n} comparisons"
    which = "p and p vs the baseline" if with_baseline else "p"
    return (
        f"p-values ({which}) are Holm-corrected over {over} of each column (Holm 1979); * marks a corrected "
        f"p < {LEVEL}; report.csv keeps the raw ones too."
    )


def translate_test_notes(sweeps: Sequence[SweepRecords], table: pd.DataFrame) -> list[str]:
    """The footnotes of translate-test cells on a QA task (TyDiQA): which gold answers they were scored against
    and on how many test examples, from their trials' ``test/english_answers``, ``test/examples`` and
    ``test/examples_total`` (:func:`~flare_ray.training.setup.translate_test_split`).

    The authors score translate-test against the answers projected into English by the markers, on the test
    examples whose markers survived translation; a cell scored against the target-language answers (a test
    split translated without markers, or a trial that recorded no count: before the counts were recorded, a
    translated test split had no English answers) is said to be so.
    """
    by_name = {s.name: s for s in sweeps}
    projected, target = [], []
    for line in table[table["column"] != AVERAGE].itertuples():
        sweep = by_name[line.sweep]
        if TASKS[sweep.task].labels is not None:
            continue
        trials = sweep.trials[sweep.trials["run_id"].isin(json.loads(line.run_ids))]
        if trials.empty or not (trials["method"] == "translate_test").all():
            continue
        where = f"{line.row}, {line.column}"
        if "test/english_answers" in trials and trials["test/english_answers"].notna().all():
            if (trials["test/english_answers"] == 1).all():
                kept, total = (_counts(trials[f"test/{k}"]) for k in ("examples", "examples_total"))
                projected.append(f"{where}: {kept} of {total}")
                continue
            target.append(where)
        elif ((sweep.provenance.get(line.language) or {}).get("test") or {}).get("recipe") == "mt":
            target.append(where)
    notes = []
    if projected:
        notes.append(
            "Translate-test on TyDiQA: scored against the gold answers projected into English by the answer "
            "markers, on the test examples whose markers survived translation, as the authors do (test "
            "examples kept of all; the markers were lost in translation for the rest): " + "; ".join(projected) + "."
        )
    if target:
        notes.append(
            "Translate-test on TyDiQA: scored against the target-language gold answers, not as the authors "
            "score it (the English test side was translated without answer markers, so exact match is near 0 "
            "for non-Latin scripts; translate the test split again): " + "; ".join(target) + "."
        )
    return notes


def _counts(values: pd.Series) -> str:
    """One count (``412``), or the counts of seeds that differ (``410/412``)."""
    return "/".join(str(int(v)) for v in dict.fromkeys(values.dropna()))


def log_report(client: MlflowClient, report: Report) -> None:
    """The report's files on every sweep's parent run, a description there, and each registered adapter's
    report row in its model version's description."""
    for sweep in report.sweeps:
        mlflow_runs.log_report(client, sweep.parent_run_id, report.files, _description(sweep, report))
        for language in sweep.languages:
            version, run_id = (sweep.tags.get(f"best.{language}.{k}") for k in ("registered_version", "run_id"))
            line = report.row_of(run_id) if run_id else None
            if version and line is not None:
                mlflow_runs.add_to_version_description(
                    client,
                    f"{sweep.config['name']}-{sweep.task}-{language}",
                    version,
                    f"Report row {line['row']!r}, {line['column']}: {score(line)}; p against the column's best: "
                    f"{p_value(line)}.",
                )


def _description(sweep: SweepRecords, report: Report) -> str:
    mine = report.table[report.table["sweep"] == sweep.name]
    best = mine[mine["best"]]
    lines = [
        f"**{sweep.name}**: {sweep.task}, {len(sweep.languages)} language(s), {len(sweep.trials)} trials, "
        f"selected on {sweep.metric}; the report (table, significance, figures) is under `report/` "
        "(report.html, report.md, report.csv, report.tex).",
        "",
        "Best per language (test/"
        + sweep.test_metric
        + "): "
        + ", ".join(f"{b['language']}: {b['row']} {score(b)}" for _, b in best.iterrows()),
        "",
        report.markdown,
    ]
    return "\n".join(lines)
