"""The shipped paper YAMLs follow the paper: Table 5's settings per task, r=64/alpha=128, stage 1 auto; each table
file is the grid it claims to be, and the toy overrides its header shows load."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from flare_ray.experiment import load_experiment, parse_override
from flare_ray.fusion import FUSION_FUNCTIONS
from flare_ray.tasks import get_task
from flare_ray.training.adapter import METHODS
from tests.helpers import REPO

SPACES = REPO / "search_spaces"
PAPER_FILES = sorted(p for p in SPACES.rglob("*.yaml") if p.name != "quickstart.yaml")
TOY_FILES = sorted((SPACES / "paper").glob("*.yaml")) + [SPACES / "rank.yaml"]  # the files with a toy command
# Table 5 (XLM-R Large, mT5-XL): epochs, batch size, sequence length, learning rate; the decoders (Llama 3.1 8B,
# Gemma 2 9B) train 3, 3 and 5 epochs with the same rest
TABLE5 = {"xnli": (10, 64, 128, 2e-5), "tydiqa": (10, 64, 512, 2e-4), "nusax": (20, 64, 128, 2e-4)}
DECODER_EPOCHS = {"xnli": 3, "tydiqa": 3, "nusax": 5}
DECODERS = {"meta-llama/Llama-3.1-8B": "tiny:llama", "google/gemma-2-9b": "tiny:gemma2"}
TINY = {"FacebookAI/xlm-roberta-large": "tiny:xlm-roberta", "google/mt5-xl": "tiny:mt5", **DECODERS}
# The Table 1 files of the other models: (task, model) by file
OTHER_MODELS = {
    f"paper/table1-{task}-{name}.yaml": (task, model)
    for task in ("xnli", "tydiqa", "nusax")
    for name, model in (
        ("mt5-xl", "google/mt5-xl"),
        ("llama-3.1-8b", "meta-llama/Llama-3.1-8B"),
        ("gemma-2-9b", "google/gemma-2-9b"),
    )
}
# The paper's target languages, the columns of Tables 6-8 (en is the source; NusaX's bbc is excluded in the paper,
# Sec. 4.3): XNLI's fourteen come from the hub copy (the offline one has sw, ur and myXNLI's my)
LANGUAGES = {
    "xnli": ["ar", "bg", "de", "el", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"],
    "tydiqa": ["ar", "bn", "fi", "id", "ko", "ru", "sw", "te"],
    "nusax": ["ace", "ban", "bjn", "bug", "ind", "jav", "mad", "min", "nij", "sun"],
}
METRIC = {"xnli": "validation/accuracy", "tydiqa": "validation/exact_match", "nusax": "validation/macro_f1"}
# What the toy command of every header sets (the rest of the file stays the paper's)
TOY_KEYS = {
    "model.name_or_path",
    "method.flare.mt_encoder",
    "task.languages",
    "task.max_records",
    "training.epochs",
    "search.seeds",
    "scaling.use_gpu",
    "training.precision",
    "scaling.cpus_per_worker",
    "storage_path",
    "translation.model",
}


def header(path: Path) -> str:
    return path.read_text().split("\nname:")[0]


def toy_command(path: Path) -> list[str]:
    """The words of the command after 'Offline at toy scale' in the file's header (comment marks and line
    continuations removed)."""
    _, found, block = header(path).partition("Offline at toy scale")
    assert found, f"{path.name}: the header shows no 'Offline at toy scale' command"
    lines = (line.removeprefix("#").strip().removesuffix("\\") for line in block.splitlines()[1:])
    return shlex.split(" ".join(line for line in lines if line))


def toy_overrides(path: Path) -> list[str]:
    words = toy_command(path)
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word == "--set"]


@pytest.mark.parametrize("path", PAPER_FILES, ids=lambda p: str(p.relative_to(SPACES)))
def test_paper_yaml_follows_table5(path):
    config = load_experiment(path)
    space = config.search.space
    epochs, batch, length, lr = TABLE5[config.task.name]
    if config.model.name_or_path in DECODERS:
        epochs = DECODER_EPOCHS[config.task.name]
    t = config.training
    assert (t.epochs, t.max_length) == (epochs, length)
    assert t.batch_size == batch or "training.batch_size" in space
    assert t.learning_rate == lr or "training.learning_rate" in space
    assert (t.lr_scheduler, t.warmup_ratio, t.max_grad_norm) == ("linear", 0.1, 1.0)  # the authors' HF Trainer
    assert config.method.lora.r == 64 and config.method.lora.lora_alpha == 128
    assert config.model.stage1 == "auto"
    assert "Table 5" in header(path) and "stage1: auto" in header(path)


@pytest.mark.parametrize("path", PAPER_FILES, ids=lambda p: str(p.relative_to(SPACES)))
def test_paper_yaml_has_the_authors_dropout_and_the_papers_precision(path):
    """LoRA dropout 0 in both stages, as in the authors' code; half precision (bf16) on the GPU, as the paper
    trained every model (Appendix B); the header says both."""
    config = load_experiment(path)
    assert config.method.lora.dropout == 0.0 and (config.stage1.lora or config.method.lora).dropout == 0.0
    assert config.scaling.use_gpu and config.training.precision == "bf16"
    assert "LoRA dropout 0" in header(path) and "Appendix B" in header(path)
    if "method.lora.dropout" not in config.search.space:  # full.yaml searches the dropout itself
        assert "dropout" not in str(config.search.grid)


def test_the_lr_header_names_the_rank_it_sets():
    config = load_experiment(SPACES / "lr.yaml")
    first = header(SPACES / "lr.yaml").splitlines()[0]
    assert f"r {config.method.lora.r}," in first and f"alpha {config.method.lora.lora_alpha}" in first


def test_appendix_e_trains_with_fusion_on_half_and_reads_no_source_at_inference():
    path = SPACES / "paper" / "appendix-e-train-only.yaml"
    config = load_experiment(path)
    assert config.search.grid == {
        "method.flare.fusion_probability": [1.0, 0.5],
        "method.flare.source_at_inference": [True, False],
    }
    assert config.method.kind == "flare" and config.search.seeds == [0, 1, 2, 3, 4] and config.search.scheduler is None
    assert config.task.name == "nusax" and config.task.languages == LANGUAGES["nusax"]
    assert config.model.name_or_path == "FacebookAI/xlm-roberta-large" and "Appendix E" in header(path)


@pytest.mark.parametrize("name", ["rank.yaml", "paper/table3-tydiqa.yaml"])
def test_table3_is_the_grid_it_claims_to_be(name):
    config = load_experiment(SPACES / name)
    search = config.search
    assert search.grid == {"method.kind": ["flare", "flare_mt"], "method.lora.r": [8, 64, 128]}
    assert search.seeds == [0, 1, 2, 3, 4] and search.scheduler is None and not search.space
    assert config.method.lora.alpha_ratio == 2 and config.method.flare.mt_encoder  # alpha = 2 r in every cell
    assert config.task.name == ("nusax" if name == "rank.yaml" else "tydiqa")
    assert "--set model.name_or_path=tiny:xlm-roberta" in header(SPACES / name)  # how to run it offline at toy scale


def _a_seeded_grid_over(config, grid: dict) -> None:
    search = config.search
    assert search.grid == grid
    assert search.seeds == [0, 1, 2, 3, 4] and search.scheduler is None and not search.space  # five seeds, no ASHA
    assert config.model.name_or_path == "FacebookAI/xlm-roberta-large"
    assert config.task.languages == LANGUAGES[config.task.name]
    assert search.metric == METRIC[config.task.name]


# Every file that reproduces a table of the paper, and that table
TABLES = {
    "paper/table1-xnli.yaml": 6,
    "paper/table1-tydiqa.yaml": 7,
    "paper/table1-nusax.yaml": 8,
    "paper/table2-tydiqa.yaml": 7,
    "paper/table2-nusax.yaml": 8,
    "paper/table3-tydiqa.yaml": 7,
    "rank.yaml": 8,
    "fusion.yaml": 8,
    "paper/table4-xnli.yaml": 6,
    "paper/table4-nusax.yaml": 8,
    "paper/appendix-e-train-only.yaml": 8,
    **{name: {"xnli": 6, "tydiqa": 7, "nusax": 8}[task] for name, (task, _) in OTHER_MODELS.items()},
}
PER_LANGUAGE = {6: "xnli", 7: "tydiqa", 8: "nusax"}  # the per-language table of each task


@pytest.mark.parametrize("path", PAPER_FILES, ids=lambda p: str(p.relative_to(SPACES)))
def test_each_paper_yaml_reads_its_tables_data_by_default(path):
    """The paper's data (Sec. 4): NLLB translate-train and the NLLB English test side, made by the sweep's translation
    stage (NLLB 3.3B); Table 4's files: NLLB translate-train and the gold English test side. The header says so."""
    from flare_ray.report.paper import setting

    config = load_experiment(path)
    table4 = path.name.startswith("table4-")
    assert config.translates and config.translation.model == "facebook/nllb-200-3.3B"
    for language in config.task.languages:
        provenance = get_task(config.task.task_config(language)).provenance()
        assert setting(provenance) == ("gold" if table4 else "mt"), (language, provenance)
    assert ("Table 4's setting" if table4 else "the paper's (Sec. 4, translate-train)") in header(path)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_each_paper_yaml_lists_the_languages_of_its_table(name):
    """Every language of the table (and no other), each one the task's data source has."""
    config = load_experiment(SPACES / name)
    task = PER_LANGUAGE[TABLES[name]]
    assert config.task.name == task and config.task.languages == LANGUAGES[task]
    for language in config.task.languages:  # the task accepts it from the file's data source
        get_task(config.task.task_config(language))


def test_every_xnli_language_of_the_paper_is_accepted_from_a_hub_copy():
    from flare_ray.languages import nllb_language
    from flare_ray.tasks import TaskConfig, TaskDataError

    for language in LANGUAGES["xnli"] + ["my"]:
        get_task(TaskConfig(name="xnli", language=language, hub_id="facebook/xnli"))
        assert nllb_language(language).fallback is None  # NLLB-200 has each one: the translation stage can run
    with pytest.raises(TaskDataError, match=r"unknown language 'de'.*offline copy's; a hub copy, task.hub_id, has"):
        get_task(TaskConfig(name="xnli", language="de"))


@pytest.mark.parametrize("task", ["xnli", "tydiqa", "nusax"])
def test_table1_is_the_grid_it_claims_to_be(task):
    path = SPACES / "paper" / f"table1-{task}.yaml"
    config = load_experiment(path)
    assert list(METHODS) == ["zero_shot", "translate_test", "lora", "input_fusion", "xmixup", "flare", "flare_mt"]
    _a_seeded_grid_over(config, {"method.kind": list(METHODS)})  # every method of the paper, once per seed
    assert config.task.name == task
    flare = config.method.flare
    assert flare.fusion == "add_relu" and flare.mt_encoder == "facebook/nllb-200-distilled-600M"  # Sec. 4, 4.3
    assert "Table 1" in header(path)


@pytest.mark.parametrize("name", sorted(OTHER_MODELS))
def test_table1_of_mt5_llama_and_gemma_is_the_authors_recipe(name):
    """mT5-XL with task heads; the decoders in 4 bit (QLoRA, bf16 compute), LoRA on every linear layer, the LM head
    (and Llama's embeddings) trained beside it (the default of method.lora.modules_to_save); every method the
    platform has for the model (X-Mixup on decoders: the platform's variant)."""
    task, model = OTHER_MODELS[name]
    config = load_experiment(SPACES / name)
    assert config.model.name_or_path == model and config.task.name == task
    search, lora = config.search, config.method.lora
    assert search.seeds == [0, 1, 2, 3, 4] and search.scheduler is None and not search.space
    decoder = model in DECODERS
    assert search.grid == {"method.kind": list(METHODS)} and search.metric == METRIC[task]
    assert (lora.r, lora.lora_alpha, lora.dropout, lora.modules_to_save) == (64, 128, 0.0, None)
    assert config.training.precision == "bf16" and config.method.flare.fusion == "add_relu"
    if decoder:
        assert (config.model.quantization, config.model.dtype, lora.target_modules) == (
            "4bit",
            "bfloat16",
            "all-linear",
        )
        assert "X-Mixup on a decoder is this platform's" in header(SPACES / name)
    else:
        assert (config.model.quantization, lora.target_modules) == ("none", None) and config.model.head in (
            None,
            "task",
        )
    assert "Table 1" in header(SPACES / name) and "Table 5" in header(SPACES / name)


@pytest.mark.parametrize("task", ["tydiqa", "nusax"])
def test_table2_is_the_grid_it_claims_to_be(task):
    path = SPACES / "paper" / f"table2-{task}.yaml"
    config = load_experiment(path)
    fusions = ["add", "mul", "add_relu", "cross_attention"]
    assert set(fusions) <= set(FUSION_FUNCTIONS)
    _a_seeded_grid_over(config, {"method.flare.fusion": fusions})
    assert config.task.name == task and config.method.kind == "flare"
    assert config.method.flare.cross_attention_heads == 1  # the paper's single head (Sec. 3.2)
    assert "Table 2" in header(path)


@pytest.mark.parametrize("task", ["xnli", "nusax"])
def test_table4_is_the_grid_it_claims_to_be_with_gold_english_at_inference(task):
    path = SPACES / "paper" / f"table4-{task}.yaml"
    config = load_experiment(path)
    _a_seeded_grid_over(config, {"method.kind": ["input_fusion", "flare"]})
    assert config.task.name == task and config.method.flare.fusion == "add_relu"
    gold = {
        "xnli": "target: gold XNLI test set; source: gold English test set",  # the hub's copy
        "nusax": "target: gold test set; source: its human English translation",
    }[task]
    for language in config.task.languages:
        provenance = get_task(config.task.task_config(language)).provenance()
        assert provenance["test"]["made_of"] == gold
        assert "English" in provenance["validation"]["made_of"].split("source: ")[1]
    assert "Table 4" in header(path)


@pytest.mark.parametrize("path", TOY_FILES, ids=lambda p: str(p.relative_to(SPACES)))
def test_every_paper_header_shows_the_toy_overrides(path):
    words = toy_command(path)
    assert words[:4] == ["python", "-m", "flare_ray.tune", str(path.relative_to(REPO))]  # its own file
    overrides = dict(parse_override(o) for o in toy_overrides(path))
    assert TOY_KEYS <= set(overrides), f"missing {sorted(TOY_KEYS - set(overrides))}"
    paper = load_experiment(path)
    assert overrides["model.name_or_path"] == TINY[paper.model.name_or_path]  # the tiny model of the same family
    assert overrides["method.flare.mt_encoder"] == "tiny:m2m_100"
    assert overrides["search.seeds"] == [0, 1] and overrides["training.epochs"] <= 2
    assert overrides["scaling.use_gpu"] is False and overrides["scaling.cpus_per_worker"] == 0.5
    assert overrides["training.precision"] == "fp32"  # no bf16 autocast on a laptop's CPU
    assert overrides["translation.model"] == "tiny:m2m_100"  # the translation stage, offline
    assert str(overrides["storage_path"]).startswith("outputs/")


@pytest.mark.parametrize("path", TOY_FILES, ids=lambda p: str(p.relative_to(SPACES)))
def test_the_toy_overrides_of_every_header_load(path):
    paper, toy = load_experiment(path), load_experiment(path, toy_overrides(path))
    assert toy.model.name_or_path == TINY[paper.model.name_or_path] and len(toy.task.languages) == 1
    assert toy.model.quantization == "none"  # bitsandbytes' 4-bit layers need a GPU
    assert toy.task.languages[0] in paper.task.languages
    assert toy.task.hub_id is None and toy.task.splits == paper.task.splits  # offline: no hub; the paper's data...
    assert toy.translation.model == "tiny:m2m_100" and toy.translates  # ...translated by the tiny NLLB-shaped model
    records = toy.task.max_records
    assert set(records) == {"train", "validation", "test"} and all(0 < n <= 64 for n in records.values())
    assert not toy.scaling.use_gpu and toy.search.seeds == [0, 1]
    assert toy.search.grid == paper.search.grid and toy.method.kind == paper.method.kind  # the same table, smaller
