"""The setup of a run, :func:`build_trial`, shared by the trial recipe, stage 1 and checkpoint scoring.

Everything a run needs before its first step is built here, in one order, so
that a trial, stage 1 and a re-scored checkpoint load the same model in the
same way (quantization, head, stage-1 weights) and a seed means the same thing
everywhere:

1. :func:`seed_everything` (Python, NumPy, torch): the seed fixes the head's
   initialisation, the LoRA initialisation, dropout, and with
   :func:`train_loader`'s sampler the data order (``training.group_by_length``: rows of similar length
   batched together);
2. the task and its splits (bad data fails here, before any model loads); for
   stage 1 their English side (:func:`english_side`);
3. :func:`load_base`: the base model and tokenizer, with the stage-1 adapter
   merged in when ``model.stage1`` names one;
4. the adapter of the method (:func:`~flare_ray.training.adapter.build_adapter`),
   or a saved one to score, and the batch encoder (:func:`task_encoder`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import torch
from torch.utils.data import DataLoader, DistributedSampler

from flare_ray.baselines import XMixupModel
from flare_ray.configfile import FieldError
from flare_ray.experiment import ExperimentConfig
from flare_ray.experiment.checks import stage1_folder_problem
from flare_ray.experiment.training import padding_free_problem
from flare_ray.fusion import ArchitectureFamily, FlareModel
from flare_ray.models.loading import infer_family, load_model, load_mt_tokenizer, newly_initialised, resolve_head
from flare_ray.models.positions import max_input_positions
from flare_ray.storage import local_copy
from flare_ray.tasks import Task, get_task
from flare_ray.tasks.base import ROLES, TaskDataError, mt_split_path
from flare_ray.tasks.encoding import TaskEncoder, flatten

from .adapter import METHODS, build_adapter

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators (CPU and CUDA): transformers' ``set_seed``."""
    from transformers import set_seed

    set_seed(seed)


@dataclass
class Base:
    """The base model of a run as trials load it, and how to encode batches for it."""

    model: torch.nn.Module
    tokenizer: Any
    family: ArchitectureFamily
    head: str  # "task" or "generative"


def load_base(experiment: ExperimentConfig, task: Task, *, gradient_checkpointing: bool | None = None) -> Base:
    """The base model (quantized as configured), its tokenizer, and the stage-1 adapter merged in.

    ``model.stage1`` is a folder written by stage 1 (a peft LoRA adapter with its task head); it is
    loaded onto the base model and merged (``merge_and_unload``), as the authors' code does, so a
    4-bit base gets its stage-1 weights the same way as a full-precision one.
    """
    spec = experiment.model
    family = infer_family(spec.name_or_path, spec.family)
    head = resolve_head(family, spec.head)
    if gradient_checkpointing is None:
        gradient_checkpointing = experiment.training.gradient_checkpointing
    model, tokenizer = load_model(
        spec.name_or_path,
        family,
        labels=task.labels,
        head=head,
        quantization=spec.quantization,
        dtype=spec.dtype,
        attn_implementation=spec.attn_implementation,
        gradient_checkpointing=gradient_checkpointing,
    )
    if spec.stage1 not in (None, "auto"):
        with local_copy(str(spec.stage1)) as folder:  # a URI (remote storage): downloaded first
            model = merge_stage1(model, Path(folder))
    return Base(model, tokenizer, family, head)


def merge_stage1(model: torch.nn.Module, folder: Path) -> torch.nn.Module:
    from peft import PeftModel

    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"model.stage1: {folder} holds no stage-1 adapter (adapter_config.json); "
            "write one with `python -m flare_ray.stage1` or use model.stage1: auto"
        )
    damaged = stage1_folder_problem(folder)  # checked before the sweep too; a URI's files only here, once fetched
    if damaged is not None:
        raise ValueError(
            f"model.stage1: {damaged}; write the folder again (`python -m flare_ray.stage1`) or use model.stage1: auto"
        )
    holds_initialised(model, folder, "model.stage1")
    # low_cpu_mem_usage: the adapter's layers are made empty and filled from the file, not initialised at random
    # first; so merging stage 1 draws nothing from the random state, and a trial's LoRA is the one its seed draws
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    merged = PeftModel.from_pretrained(model, safetensors_only(folder), low_cpu_mem_usage=True).merge_and_unload()
    if tied and not merged.config.tie_word_embeddings:  # a trained tied LM head (Gemma 2) comes back as two copies
        merged.config.tie_word_embeddings = True  # of one matrix: one again, as the checkpoint ties them
        merged.tie_weights()
    return merged


def holds_initialised(model: torch.nn.Module, folder: Path, what: str) -> None:
    """ValueError unless the adapter in ``folder`` saves every module the base checkpoint lacks
    (:func:`~flare_ray.models.loading.newly_initialised`, trained as the task head): without them, what the
    adapter scores would depend on the random state when the model loaded."""
    saved = json.loads((Path(folder) / "adapter_config.json").read_text()).get("modules_to_save") or []
    lacking = [name for name in newly_initialised(model) if not any(name.endswith(s) for s in saved)]
    if lacking:
        raise ValueError(
            f"{what}: the adapter in {folder} does not hold {lacking}, which the base model's checkpoint lacks "
            "(transformers draws them at random on every load); it was written before flare_ray saved such "
            "modules with the adapter: train it again (with model.stage1: auto the sweep does, once)"
        )


def safetensors_only(folder: Path) -> Path:
    """``folder`` when its adapter weights are safetensors; a checkpoint's pickled weights (peft's
    ``adapter_model.bin``, which peft would otherwise fall back to) are never loaded."""
    if not (Path(folder) / "adapter_model.safetensors").is_file():
        pickled = (
            " (it has adapter_model.bin, a pickle: convert it to safetensors)"
            if (Path(folder) / "adapter_model.bin").is_file()
            else ""
        )
        raise FileNotFoundError(
            f"{folder} holds no adapter_model.safetensors{pickled}; only safetensors weights are loaded"
        )
    return Path(folder)


def task_encoder(experiment: ExperimentConfig, task: Task, base: Base) -> TaskEncoder:
    """The batch encoder of a run: the source side for FLARE and X-Mixup, the MT encoder's input for FLARE-MT,
    source and target in one input for input-level fusion."""
    method = experiment.method
    mt_tokenizer = None
    if method.kind == "flare_mt":
        mt_tokenizer = load_mt_tokenizer(method.flare.mt_encoder, task.language)
    return TaskEncoder(
        task,
        base.tokenizer,
        base.family,
        experiment.training.max_length,
        source=METHODS[method.kind].source,
        input_fusion=METHODS[method.kind].input_fusion,
        mt_tokenizer=mt_tokenizer,
        generative=base.head == "generative",
        answer_tokens=experiment.training.max_new_tokens,
        max_positions=max_input_positions(base.model.config),
        xmixup=method.kind == "xmixup",
    )


def english_side(task: Task, records: datasets.Dataset) -> datasets.Dataset:
    """The records with their English (source) side as the side the model reads (stage 1, translate-test).

    QA: the English answers (``source_answers``) become the gold ones; a record without any keeps its
    target-language answers. Translate-test does not score such records as they are: its test split goes
    through :func:`translate_test_split`."""
    columns = list(task.text_fields) + ([] if task.labels else ["answers"])
    keep = lambda r, c: r[f"source_{c}"] or r[f"target_{c}"] if c == "answers" else r[f"source_{c}"]  # noqa: E731
    return records.map(lambda r: {f"target_{c}": keep(r, c) for c in columns})


@dataclass(frozen=True)
class EnglishTest:
    """The test split as translate-test scores it (its English side), and what it was made of."""

    records: datasets.Dataset
    total: int  # test examples before those without English answers were left out
    answers: Literal["english", "target"] | None  # QA: the gold answers scored against; None: classification

    def metrics(self) -> dict[str, float]:
        """Recorded beside the trial's test scores (``test/<key>``) and read by the report's footnote; QA only:
        ``examples`` scored of ``examples_total``, and ``english_answers`` (1: the answers projected into
        English by the markers; 0: the target-language gold answers)."""
        if self.answers is None:
            return {}
        return {
            "examples": float(len(self.records)),
            "examples_total": float(self.total),
            "english_answers": float(self.answers == "english"),
        }


def translate_test_split(task: Task, records: datasets.Dataset) -> EnglishTest:
    """The test split that translate-test scores: its English side and, for QA, the English gold answers.

    The authors (pnborchert/FLARE: ``run_translate.py``, ``tasks/tydiqa.py``) translate the TyDiQA test contexts
    into English with the gold answer between markers, take the span the markers enclose after translation as
    the English gold answer, and leave out the examples whose markers did not survive (``filter_qa_translations``:
    ``answer_start == -1`` or an empty answer). So a QA test split with English answers (``source_answers``) is
    scored against them, on the examples that have them (the count is in :meth:`EnglishTest.metrics`).

    A translated QA test split without any English answer was translated without markers (before the
    translation stage projected test answers: provenance ``answers_projected: false``, or none): it is scored as
    before, against the target-language gold answers (exact match near 0 for non-Latin scripts), with a warning
    here and ``english_answers = 0`` on the trial, which the report's footnote states; translating the test split
    again (``python -m flare_ray.translate``) gives the authors' scoring. One whose provenance says its answers
    were projected, but in which no example kept its markers, leaves nothing to score: :class:`TaskDataError`.
    """
    english = english_side(task, records)
    if task.labels:
        return EnglishTest(english, len(records), None)
    where = f"{task.name}/{task.language}/test"
    projected = [i for i, answers in enumerate(records["source_answers"]) if answers]
    if projected:
        if len(projected) < len(records):
            log.info(
                "%s: translate-test scores the %d of %d examples whose answer markers survived translation, "
                "against their answers projected into English",
                where,
                len(projected),
                len(records),
            )
        return EnglishTest(english.select(projected), len(records), "english")
    if (task.mt_provenance("test") or {}).get("answers_projected"):
        path = mt_split_path(task.config.mt_dir, task.name, task.language, "test")
        raise TaskDataError(
            f"{path}: no test example kept its answer markers through translation (source_answers empty in all "
            f"{len(records)} records; its provenance says answers_projected: true): translate-test has nothing to "
            "score; translate the test split again, e.g. with a larger translation.max_length"
        )
    log.warning(
        "%s: the English test side has no answers (translated without answer markers): translate-test is "
        "scored against the target-language gold answers, not as the authors score it (answers projected "
        "into English by markers); translate the test split again with `python -m flare_ray.translate`",
        where,
    )
    return EnglishTest(english, len(records), "target")


@dataclass
class TrialSetup:
    task: Task
    splits: dict[str, Any]
    model: torch.nn.Module  # the adapted model (FlareModel or peft LoRA)
    encoder: TaskEncoder
    base: Base
    test_metrics: dict[str, float] = field(default_factory=dict)  # translate-test: :meth:`EnglishTest.metrics`


def build_trial(
    experiment: ExperimentConfig, language: str, roles=ROLES, *, english: bool = False, adapter: Path | None = None
) -> TrialSetup:
    """Seed, data, base model (with stage 1), adapter and encoder of one run.

    ``english``: the splits' English side (stage 1; translate-test reads its validation and test splits
    so, the test split as :func:`translate_test_split` makes it). ``adapter``: a saved trial adapter to score
    (no gradient checkpointing, on the GPU when there is one) instead of a new one to train.
    """
    if experiment.model.stage1 == "auto":
        raise ValueError(
            "model.stage1 is 'auto': the sweep trains stage 1 and hands trials its folder "
            "(flare_ray.training.stage1.ensure_stage1); a trial run by hand needs that folder or null"
        )
    seed_everything(experiment.training.seed)
    task = get_task(experiment.task.task_config(language))
    splits = {role: task.load(role) for role in roles}  # data errors before the model
    method = METHODS[experiment.method.kind]
    test_metrics: dict[str, float] = {}
    if english or method.reads_english:
        read = ROLES if english else ("validation", "test")
        for role in [r for r in splits if r in read]:
            if role == "test" and method.reads_english:  # translate-test: the English gold answers (QA)
                test = translate_test_split(task, splits[role])
                splits[role], test_metrics = test.records, test.metrics()
            else:
                splits[role] = english_side(task, splits[role])
    if experiment.training.padding_free:  # a hub model's family is known from its config.json alone
        family = infer_family(experiment.model.name_or_path, experiment.model.family).value
        kind, fusion = experiment.method.kind, experiment.method.flare.fusion
        if (problem := padding_free_problem(family, experiment.model.head, kind, fusion)) is not None:
            raise FieldError(("training", "padding_free"), f"true: {problem}; expected false")
    base = load_base(experiment, task, gradient_checkpointing=False if adapter else None)
    model = build_adapter(base.model, experiment.method) if adapter is None else load_adapter(base, experiment, adapter)
    return TrialSetup(task, splits, model, task_encoder(experiment, task, base), base, test_metrics)


def load_adapter(base: Base, experiment: ExperimentConfig, folder: Path) -> torch.nn.Module:
    """A trial's saved adapter on its base model, in eval mode."""
    from peft import PeftModel

    kind = experiment.method.kind
    if not METHODS[kind].trains:
        adapted = base.model.requires_grad_(False)
    else:
        holds_initialised(base.model, safetensors_only(folder), "the trial's adapter")
        loader = {"lora": PeftModel, "input_fusion": PeftModel, "xmixup": XMixupModel}.get(kind, FlareModel)
        adapted = loader.from_pretrained(base.model, folder)
    if torch.cuda.is_available() and experiment.model.quantization == "none":  # 4-bit models are placed at load
        adapted.to("cuda")
    return adapted.eval()


def train_loader(records, encoder: TaskEncoder, training, rank: int, world: int) -> DataLoader:
    """This worker's share of the training records, reshuffled every epoch (``sampler.set_epoch``).

    The sampler draws the order from ``training.seed`` and the epoch alone, so the order is the same for every
    run with that seed and independent of what else used the global RNG: ``DistributedSampler``'s shuffle, or
    with ``training.group_by_length`` transformers' ``DistributedLengthGroupedSampler`` (the HF Trainer's
    ``group_by_length``: a shuffle cut into windows of up to 50 global batches, each sorted by
    :func:`row_lengths`; every rank takes every ``world``-th row of it, so the ranks' batches of one step hold
    rows of similar length). Both split the rows among the ranks alike (the same count each, the first rows
    repeated to fill the last step), so the number of steps does not change.
    """
    rows = list(records)
    window = getattr(training, "group_by_length", False)
    if window is not False:
        sampler: DistributedSampler = length_grouped_sampler(
            training.batch_size * world * training.grad_accumulation,  # one optimizer step's rows, as the Trainer
            None if window is True else window,
            num_replicas=world,
            rank=rank,
            seed=training.seed,
            lengths=row_lengths(rows, encoder),
        )
    else:
        sampler = DistributedSampler(rows, num_replicas=world, rank=rank, shuffle=True, seed=training.seed)
    collate = lambda batch: encoder.train_batch(batch).inputs  # noqa: E731
    if getattr(training, "padding_free", False):  # the source flattened too where no cache reads its rows
        collate = lambda batch: flatten(encoder.train_batch(batch).inputs, source=not training.source_cache_gb)  # noqa: E731
    return DataLoader(
        rows,
        batch_size=training.batch_size,
        sampler=sampler,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(training.seed),  # keep the global RNG for dropout
    )


def length_grouped_sampler(batch_size: int, window: int | None, **kwargs) -> DistributedSampler:
    """transformers' ``DistributedLengthGroupedSampler`` (the HF Trainer's ``group_by_length``), its windows
    ``window`` batches long (``None``: transformers' own, ``min(rows // (4 * batch_size), 50)`` batches, which
    sorts nothing on a split as small as NusaX's at batch 64); drawn by transformers'
    ``get_length_grouped_indices`` in either case, so ``window`` changes only the windows' size."""
    from transformers.trainer_pt_utils import DistributedLengthGroupedSampler, get_length_grouped_indices

    class Windowed(DistributedLengthGroupedSampler):
        def __iter__(self):
            g = torch.Generator().manual_seed(self.seed + self.epoch)  # transformers' own seeding and split
            indices = get_length_grouped_indices(self.lengths, self.batch_size, window, generator=g)
            indices += indices[: self.total_size - len(indices)]
            return iter(indices[self.rank : self.total_size : self.num_replicas])

    return (DistributedLengthGroupedSampler if window is None else Windowed)(batch_size, **kwargs)


def row_lengths(rows: list, encoder: TaskEncoder, chunk: int = 256) -> list[int]:
    """Each training row's length as its batches encode it: its tokens on the longest of the sides the encoder
    gives it (the ones of each attention mask: the target side and, for FLARE and X-Mixup, the source side;
    FLARE-MT's MT input).

    The longest side, not the sum: each side of a batch is padded to its own longest row, and the sides of a
    parallel row are near in length (a translation), so rows of similar longest side are near on each side;
    on NusaX Javanese's FLARE batches (``benchmarks/padding.py``, batch 32) it pads less than the sum (26.8 %
    against 28.5 % of the positions with the tiny XLM-R tokenizer, 14.6 % against 16.3 % with the tiny Llama's).
    Encoded ``chunk`` rows at a time, as the loader encodes them (the same truncation), once per run."""
    lengths: list[int] = []
    for start in range(0, len(rows), chunk):
        inputs = encoder.train_batch(rows[start : start + chunk]).inputs
        sides = torch.stack([v.sum(dim=1) for k, v in inputs.items() if k.endswith("attention_mask")])
        lengths += [int(n) for n in sides.max(dim=0).values.tolist()]
    return lengths


def optimizer_steps(loader: DataLoader, training) -> int:
    """Optimizer steps of the whole run (the learning-rate schedule's length)."""
    return training.epochs * math.ceil(len(loader) / training.grad_accumulation)
