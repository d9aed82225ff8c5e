"""The project's trials against a plain peft loop of the same recipe, on a real multilingual encoder.

multilingual-e5-small (12 layers, 384 wide, XLM-R's vocabulary; no pooler, no task head in its checkpoint)
from a Hugging Face cache that ``../shared/tools/e5_offline.py DIR`` builds offline. NusaX, English stage 1
then Javanese, LoRA and FLARE (add_relu, every layer), the YAML below (r 8, alpha 16, dropout 0, constant
learning rate 2e-4, no warm-up, 5 epochs of batch 16 x 64 tokens, AdamW without weight decay, gradients
clipped at 1.0, the best validation epoch scored on the gold test set).

    python benchmarks/recipe_real_encoder.py --hf-home DIR --steps   # item 2: step by step, a few minutes
    python benchmarks/recipe_real_encoder.py --hf-home DIR           # item 3: seeds 0-2, both sides (~1-2 h)

**The plain loop** uses transformers, peft and torch, and of this project only the FLARE model itself
(:func:`flare_ray.fusion.get_flare_model`, the method, which knows nothing of the platform). It reads the
vendored NusaX CSVs with pandas, draws its data order from the seed as the project does (a
``DistributedSampler`` reshuffled per epoch, epochs counted from 1), trains the LoRA with the task head
(peft's ``classifier`` and the pooler the checkpoint lacks), merges stage 1 and reloads every weight it
trained. **The project's side** is ``python -m flare_ray.tune`` on the YAML (Ray Tune, stage 1 automatic), read
back from MLflow.

``--steps`` compares the two sides step by step before any training, for stage 1 and for the Javanese LoRA
and FLARE trials on the same stage-1 weights: the first batch (ids, mask, labels), the trainable parameters
(names and initial values), the first batch's loss, every trainable gradient, and the parameters after the
first optimizer step. Nothing here is a test: the numbers go to the console (and ``--results``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
MODEL = "intfloat/multilingual-e5-small"
LABELS = ["positive", "neutral", "negative"]  # NusaX's, in the project's order
NUSAX = REPO / "flare_ray" / "data" / "nusax" / "sentiment"


def recipe_yaml(name: str, methods: list[str], seeds: list[int]) -> str:
    """The recipe as an experiment YAML: a grid of ``methods`` (method.kind) x ``seeds``, NusaX Javanese."""
    return f"""\
name: {name}
model: {{name_or_path: {MODEL}, stage1: auto}}
task: {{name: nusax, languages: [jav]}}
stage1:
  training: {{epochs: 5, batch_size: 16, max_length: 64, learning_rate: 2.0e-4, lr_scheduler: constant, warmup_ratio: 0.0, seed: 0}}
method:
  kind: flare
  lora: {{r: 8, alpha: 16, dropout: 0.0, target_modules: [query, value]}}
  flare: {{fusion: add_relu, fusion_layers: all}}
training: {{epochs: 5, batch_size: 16, eval_batch_size: 64, max_length: 64, learning_rate: 2.0e-4, lr_scheduler: constant, warmup_ratio: 0.0}}
scaling: {{num_workers: 1, use_gpu: false, cpus_per_worker: 2.0}}
search: {{grid: {{method.kind: [{", ".join(methods)}]}}, seeds: [{", ".join(map(str, seeds))}], scheduler: null}}
"""


YAML = recipe_yaml("e5-nusax", ["lora", "flare"], [0, 1, 2])
RECIPE = {
    "r": 8,
    "alpha": 16,
    "dropout": 0.0,
    "targets": ["query", "value"],
    "epochs": 5,
    "batch_size": 16,
    "eval_batch_size": 64,
    "max_length": 64,
    "learning_rate": 2e-4,
    "max_grad_norm": 1.0,
    "stage1_seed": 0,
}


# -- the plain loop -------------------------------------------------------------------------------------------
def records(language: str, split: str) -> list[dict]:
    """One NusaX split as (id, target text, English text, label) rows, in file order."""
    import pandas as pd

    target = pd.read_csv(NUSAX / language / f"{split}.csv")
    english = pd.read_csv(NUSAX / "english" / f"{split}.csv").set_index("id")
    return [
        {"id": r.id, "text": r.text, "source": english.loc[r.id, "text"], "label": LABELS.index(r.label)}
        for r in target.itertuples()
    ]


class Plain:
    """A plain two-stage peft loop of the recipe."""

    def __init__(self):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(MODEL)

    def model(self, seed: int, stage1_state: dict | None, kind: str):
        """The base model (its state replaced by the merged stage 1's, every weight), with a new LoRA."""
        from peft import LoraConfig, TaskType, get_peft_model
        from transformers import AutoModelForSequenceClassification, set_seed

        from flare_ray.fusion import FlareConfig, get_flare_model

        set_seed(seed)
        base = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=len(LABELS))
        if stage1_state is not None:
            base.load_state_dict(stage1_state)
        lora = LoraConfig(
            r=RECIPE["r"],
            lora_alpha=RECIPE["alpha"],
            lora_dropout=RECIPE["dropout"],
            target_modules=RECIPE["targets"],
            task_type=TaskType.SEQ_CLS,
            modules_to_save=["bert.pooler"],
        )
        if kind == "flare":
            return get_flare_model(base, FlareConfig(fusion="add_relu", fusion_layers="all"), lora)
        return get_peft_model(base, lora)

    def batch(self, rows: list[dict], kind: str, english: bool = False) -> dict:
        import torch

        def encode(texts):
            return self.tokenizer(
                texts,
                truncation=True,
                max_length=RECIPE["max_length"],
                padding=True,
                return_tensors="pt",
            )

        target = encode([r["source" if english else "text"] for r in rows])
        batch = {
            "input_ids": target.input_ids,
            "attention_mask": target.attention_mask,
            "labels": torch.tensor([r["label"] for r in rows]),
        }
        if kind == "flare":
            source = encode([r["source"] for r in rows])
            batch.update(source_input_ids=source.input_ids, source_attention_mask=source.attention_mask)
        return batch

    def loader(self, rows: list[dict], seed: int):
        import torch
        from torch.utils.data import DataLoader, DistributedSampler

        sampler = DistributedSampler(rows, num_replicas=1, rank=0, shuffle=True, seed=seed)
        return DataLoader(
            rows,
            batch_size=RECIPE["batch_size"],
            sampler=sampler,
            collate_fn=lambda b: b,
            generator=torch.Generator().manual_seed(seed),
        )

    def optimizer(self, model):
        import torch

        return torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=RECIPE["learning_rate"], weight_decay=0.0
        )

    def step(self, model, optimizer, batch) -> float:
        import torch

        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], RECIPE["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def macro_f1(self, model, rows: list[dict], kind: str, english: bool = False) -> float:
        import torch
        from sklearn.metrics import f1_score

        model.eval()
        predicted = []
        with torch.no_grad():
            for i in range(0, len(rows), RECIPE["eval_batch_size"]):
                batch = self.batch(rows[i : i + RECIPE["eval_batch_size"]], kind, english)
                batch.pop("labels")
                predicted += model(**batch).logits.argmax(-1).tolist()
        return 100 * f1_score([r["label"] for r in rows], predicted, labels=range(len(LABELS)), average="macro")

    def train(self, seed: int, stage1_state: dict | None, kind: str, language: str, english: bool = False) -> dict:
        """Epochs of training, validation after each; the best epoch's model scored on test. With
        ``english`` (stage 1) the English side of the splits, and the merged model's state comes back."""
        train, validation, test = (records(language, s) for s in ("train", "valid", "test"))
        model = self.model(seed, stage1_state, kind)
        optimizer, loader = self.optimizer(model), self.loader(train, seed)
        curve, losses, best = [], [], (None, None)
        for epoch in range(1, RECIPE["epochs"] + 1):
            loader.sampler.set_epoch(epoch)
            model.train()
            epoch_losses = [self.step(model, optimizer, self.batch(rows, kind, english)) for rows in loader]
            losses.append(sum(epoch_losses) / len(epoch_losses))
            curve.append(self.macro_f1(model, validation, kind, english))
            if best[0] is None or curve[-1] > best[0]:
                best = (curve[-1], {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad})
            print(
                f"  plain {'stage 1' if english else kind} seed {seed} epoch {epoch}: loss {losses[-1]:.4f} "
                f"validation macro-F1 {curve[-1]:.2f}",
                flush=True,
            )
        model.load_state_dict(best[1], strict=False)
        out = {"curve": curve, "losses": losses, "best_epoch": curve.index(best[0]) + 1}
        if english:
            merged = model.merge_and_unload()
            out["state"] = {k: v.detach().clone() for k, v in merged.state_dict().items()}
        else:
            out["test"] = self.macro_f1(model, test, kind)
        return out


# -- the project's side ---------------------------------------------------------------------------------------
def project_sweep(out: Path, env: dict) -> dict:
    """``python -m flare_ray.tune`` on the YAML; per (method, seed): test macro-F1 and the validation curve,
    and stage 1's English validation curve, from MLflow and stage 1's folder."""
    from mlflow.tracking import MlflowClient

    yaml = out / "e5-nusax.yaml"
    yaml.write_text(YAML)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    command = [
        sys.executable,
        "-m",
        "flare_ray.tune",
        str(yaml),
        "--set",
        f"storage_path={out / 'storage'}",
        "--set",
        f"tracking.tracking_uri={uri}",
    ]
    with open(out / "project.log", "w") as log:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"the project's sweep failed: {out / 'project.log'}")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("e5-nusax")
    results = {}
    for run in client.search_runs([experiment.experiment_id], "tags.flare_ray.trial_id != ''"):
        tags, metrics = run.data.tags, run.data.metrics
        if "test/macro_f1" not in metrics:
            continue
        curve = [
            m.value
            for m in sorted(client.get_metric_history(run.info.run_id, "validation/macro_f1"), key=lambda m: m.step)
        ]
        results[(tags["flare_ray.method"], int(tags["flare_ray.seed"]))] = {
            "test": metrics["test/macro_f1"],
            "curve": curve,
        }
    stage1 = next((out / "storage" / "stage1").glob("*/stage1.json"))
    results["stage1"] = json.loads(stage1.read_text())
    results["stage1_log"] = [line for line in (out / "project.log").read_text().splitlines() if "stage 1" in line]
    return results


# -- step by step (item 2) ------------------------------------------------------------------------------------
def compare(name: str, project: dict, plain: dict) -> str:
    """The largest absolute difference between two dicts of tensors with the same keys (or why they differ)."""
    if set(project) != set(plain):
        return (
            f"{name}: keys differ: project only {sorted(set(project) - set(plain))[:4]}, plain only "
            f"{sorted(set(plain) - set(project))[:4]}"
        )
    shapes = [k for k in project if project[k].shape != plain[k].shape]
    if shapes:
        return (
            f"{name}: shapes differ at {shapes[0]}: project {tuple(project[shapes[0]].shape)}, plain "
            f"{tuple(plain[shapes[0]].shape)}"
        )
    diffs = {k: (project[k].float() - plain[k].float()).abs().max().item() for k in project}
    worst = max(diffs, key=diffs.get)
    where = f" (at {worst}; {sum(d > 0 for d in diffs.values())} differ)" if diffs[worst] > 0 else ""
    return f"{name}: {len(project)} tensors, max |project - plain| = {diffs[worst]:.3g}{where}"


def steps(out: Path) -> list[str]:
    """The first step of stage 1 and of the Javanese LoRA and FLARE trials, project against plain loop."""
    import torch

    from flare_ray.experiment import load_experiment
    from flare_ray.training.engine import Engine
    from flare_ray.training.session import in_tune_trial
    from flare_ray.training.setup import build_trial, train_loader
    from flare_ray.training.stage1 import stage1_experiment

    yaml = out / "e5-nusax.yaml"
    yaml.write_text(YAML)
    lines = []
    experiment = load_experiment(yaml, ["model.stage1=null", f"storage_path={out / 'steps'}"])
    plain = Plain()
    stage1_folder = out / "steps" / "stage1"
    for stage, kind in (("stage 1", "lora"), ("trial", "lora"), ("trial", "flare")):
        seed = RECIPE["stage1_seed"]
        if stage == "stage 1":
            config = stage1_experiment(experiment)
            run = build_trial(config, "jav", roles=("train",), english=True)
            plain_model = plain.model(seed, None, "lora")
        else:
            config = experiment.model_copy(
                update={
                    "model": experiment.model.model_copy(update={"stage1": str(stage1_folder)}),
                    "method": experiment.method.model_copy(update={"kind": kind}),
                    "training": experiment.training.model_copy(update={"seed": seed}),
                }
            )
            run = build_trial(config, "jav", roles=("train",))
            merged = build_trial(
                config.model_copy(update={"method": config.method.model_copy(update={"kind": "zero_shot"})}),
                "jav",
                roles=("train",),
            ).model  # the stage-1 model as trials merge it
            plain_model = plain.model(seed, {k: v.clone() for k, v in merged.state_dict().items()}, kind)
        label = f"{stage} ({kind})"
        loader = train_loader(run.splits["train"], run.encoder, config.training, 0, 1)
        loader.sampler.set_epoch(1)
        project_batch = next(iter(loader))
        plain_loader = plain.loader(records("javanese", "train"), config.training.seed)
        plain_loader.sampler.set_epoch(1)
        plain_batch = plain.batch(next(iter(plain_loader)), kind, english=stage == "stage 1")
        lines.append(
            compare(
                f"{label} first batch", {k: v for k, v in project_batch.items()}, {k: v for k, v in plain_batch.items()}
            )
        )
        with in_tune_trial():  # one process, no Ray Train worker group: the engine places the model itself
            engine = Engine(run.model, config.training, config.scaling, 100, quantized=False)
        project_params = {k: v.detach().clone() for k, v in run.model.named_parameters() if v.requires_grad}
        plain_params = {k: v.detach().clone() for k, v in plain_model.named_parameters() if v.requires_grad}
        lines.append(compare(f"{label} trainable parameters before the step", project_params, plain_params))
        run.model.train(), plain_model.train()
        torch.manual_seed(1)  # the same dropout masks on both sides (the base model's own dropout)
        project_loss = engine.model(**project_batch).loss
        project_loss.backward()
        torch.manual_seed(1)
        plain_loss = plain_model(**plain_batch).loss
        plain_loss.backward()
        lines.append(f"{label} first-batch loss: project {project_loss.item():.6f}, plain {plain_loss.item():.6f}")
        grads = lambda m: {k: v.grad.clone() for k, v in m.named_parameters() if v.requires_grad}  # noqa: E731
        lines.append(compare(f"{label} gradients", grads(run.model), grads(plain_model)))
        if kind == "flare":  # as a trial runs: the source side read back from the source cache (half precision)
            lines.append(cached_step(config, project_batch, project_loss.item(), grads(run.model)))
        engine._optimizer_step(config.training.max_grad_norm)
        optimizer = plain.optimizer(plain_model)
        torch.nn.utils.clip_grad_norm_(
            [p for p in plain_model.parameters() if p.requires_grad], RECIPE["max_grad_norm"]
        )
        optimizer.step()
        lines.append(
            compare(
                f"{label} parameters after one step",
                {k: v.detach() for k, v in run.model.named_parameters() if v.requires_grad},
                {k: v.detach() for k, v in plain_model.named_parameters() if v.requires_grad},
            )
        )
        if stage == "stage 1":  # the trials below start from this model, as a trial merges it
            run.model.save_pretrained(stage1_folder)
        print("\n".join(lines[-6:]), flush=True)
    lines += data_order(experiment, plain)
    lines.append(merged_stage1(experiment, stage1_folder))
    print("\n".join(lines[-2:]), flush=True)
    return lines


def cached_step(config, batch: dict, loss: float, grads: dict) -> str:
    """The first step of the same FLARE trial with its source rows read from the source cache (filled by a
    pass over the batch first, as a sweep's first trial builds it before its first step), against the step
    that ran the source pass."""
    import torch

    from flare_ray.training.setup import build_trial
    from flare_ray.training.source_cache import attach_source_cache

    model = build_trial(config, "jav", roles=()).model
    cache = attach_source_cache(model, config)
    with torch.no_grad():
        model.eval()(**batch)
    misses = cache.misses
    model.train()
    torch.manual_seed(1)
    cached = model(**batch).loss
    cached.backward()
    diff = max((v.grad - grads[k]).abs().max().item() for k, v in model.named_parameters() if v.requires_grad)
    relative = max(
        ((v.grad - grads[k]).norm() / grads[k].norm().clamp_min(1e-12)).item()
        for k, v in model.named_parameters()
        if v.requires_grad and "lora_B" in k
    )
    return (
        f"trial (flare) from the source cache ({cache.hits} hits, {misses} misses): loss {cached.item():.6f} "
        f"(source pass: {loss:.6f}); gradients: max |cached - source pass| = {diff:.3g}, largest relative "
        f"difference of a LoRA B gradient {relative:.2%}"
    )


def data_order(experiment, plain: Plain) -> list[str]:
    """The ids of every training batch of every epoch, the project's loader against the plain loop's."""
    from flare_ray.tasks import get_task
    from flare_ray.training.setup import train_loader

    task = get_task(experiment.task.task_config("jav"))
    rows = list(task.load("train"))
    ids = lambda loader: [[str(r["id"]) for r in batch] for batch in loader]  # noqa: E731
    lines = []
    for seed in (0, 1, 2):
        training = experiment.training.model_copy(update={"seed": seed})
        project = train_loader(rows, None, training, 0, 1)
        project.collate_fn = lambda batch: batch  # the records themselves, not the encoded batch
        theirs = plain.loader(records("javanese", "train"), seed)
        same = []
        for epoch in range(1, experiment.training.epochs + 1):
            project.sampler.set_epoch(epoch)
            theirs.sampler.set_epoch(epoch)
            same.append(ids(project) == ids(theirs))
        lines.append(f"data order, seed {seed}: every batch of epochs 1-{len(same)} the same ids: {same}")
    return lines


def merged_stage1(experiment, folder: Path) -> str:
    """The stage-1 model as a trial merges it (every weight) against plain peft's merge of the same adapter."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from flare_ray.training.setup import build_trial

    config = experiment.model_copy(
        update={
            "model": experiment.model.model_copy(update={"stage1": str(folder)}),
            "method": experiment.method.model_copy(update={"kind": "zero_shot"}),
        }
    )
    project = build_trial(config, "jav", roles=()).model.state_dict()
    base = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=len(LABELS))
    plain = PeftModel.from_pretrained(base, folder).merge_and_unload().state_dict()
    dtypes = sorted({str(v.dtype) for v in project.values()})
    return compare(f"stage 1 merged, every weight (dtypes {dtypes})", project, plain)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf-home", required=True, help="the cache e5_offline.py built")
    parser.add_argument("--steps", action="store_true", help="only the step-by-step comparison (item 2)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a new temporary one)")
    parser.add_argument("--results", type=Path, default=Path("-"), help="append the results here (- : print only)")
    args = parser.parse_args()
    os.environ.update(HF_HOME=args.hf_home, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_ADDRESS="local")
    out = args.out or Path(tempfile.mkdtemp(prefix="recipe-e5-"))
    out.mkdir(parents=True, exist_ok=True)
    import torch
    from common import report
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.set_num_threads(2)
    if args.steps:
        lines = steps(out)
        report(
            "### Step by step: the project's first step against the plain loop's (e5-small, NusaX)\n\n"
            + "\n".join(f"- {line}" for line in lines)
            + "\n",
            args.results,
        )
        return

    started = time.time()
    project = project_sweep(out, dict(os.environ))
    print(f"project's sweep: {time.time() - started:.0f} s", flush=True)
    plain = Plain()
    stage1 = plain.train(RECIPE["stage1_seed"], None, "lora", "javanese", english=True)
    rows = ["| method | seed | project | plain loop | difference |", "| --- | ---: | ---: | ---: | ---: |"]
    curves = []
    for kind in ("lora", "flare"):
        for seed in args.seeds:
            ours = plain.train(seed, stage1["state"], kind, "javanese")
            theirs = project[(kind, seed)]
            rows.append(
                f"| {kind} | {seed} | {theirs['test']:.2f} | {ours['test']:.2f} | "
                f"{theirs['test'] - ours['test']:+.2f} |"
            )
            curves.append(
                f"- {kind} seed {seed}, validation macro-F1 by epoch: project "
                f"{', '.join(f'{x:.1f}' for x in theirs['curve'])}; plain "
                f"{', '.join(f'{x:.1f}' for x in ours['curve'])}"
            )
    english = project["stage1"]
    text = "\n".join(
        [
            "### Javanese test macro-F1, the project's trials against a plain peft loop (e5-small, NusaX)",
            "",
            *rows,
            "",
            f"Stage 1, English validation macro-F1 by epoch: plain loop {', '.join(f'{x:.1f}' for x in stage1['curve'])} "
            f"(best epoch {stage1['best_epoch']}); project: best epoch {english['best_epoch']}, "
            f"{english['english_validation'].get('macro_f1', float('nan')):.1f}",
            *project["stage1_log"],
            "",
            *curves,
            "",
            f"({time.time() - started:.0f} s in all; work folder {out})",
        ]
    )
    report(text + "\n", args.results)


if __name__ == "__main__":
    main()
