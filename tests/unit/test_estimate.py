"""What a sweep will cost, before it starts (flare_ray.search.estimate): the optimizer steps against the trial's
own loader and the engine's stepping rule, ASHA's rungs against Ray's, the trials laid onto the slots, step
times read back from an earlier sweep's MLflow records, a calibration cached by its fingerprint, and the lines
of the dry run."""

from __future__ import annotations

import math

import pytest
from mlflow import MlflowClient

from flare_ray.cli.tune import main
from flare_ray.experiment import load_experiment
from flare_ray.search import estimate as est
from flare_ray.search.plan import dry_run_text, plan_searches
from flare_ray.training.setup import train_loader
from tests.helpers import REPO

QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"  # 3 cells × 3 seeds, 500 training records, batch 16


def engine_steps(batches: int, accumulation: int) -> int:
    """The optimizer steps Engine.train_epoch takes over ``batches`` (``step % accumulation == 0`` or the last)."""
    return sum(step % accumulation == 0 or step == batches for step in range(1, batches + 1))


@pytest.mark.parametrize(
    "records, batch, accumulation, workers",
    [(500, 16, 1, 1), (500, 16, 3, 1), (128, 16, 4, 2), (101, 8, 2, 3), (7, 16, 1, 4), (1000, 32, 5, 8)],
)
def test_the_step_count_is_the_trials_loader_and_engine(records, batch, accumulation, workers):
    training = load_experiment(
        QUICKSTART, [f"training.batch_size={batch}", f"training.grad_accumulation={accumulation}"]
    ).training
    for rank in range(workers):  # every rank's DistributedSampler share: the same length
        loader = train_loader(list(range(records)), None, training, rank, workers)
        assert est.loader_batches(records, batch, workers) == len(loader)
        assert est.optimizer_steps_per_epoch(records, batch, accumulation, workers) == engine_steps(
            len(loader), accumulation
        )
    # DeepSpeed's accumulation boundaries run on across epochs
    assert est.optimizer_steps(records, batch, accumulation, workers, 3, deepspeed=True) == (
        3 * len(loader) // accumulation
    )


def test_asha_rungs_are_rays_and_a_trial_reaches_rung_k_with_probability_eta_to_the_minus_k():
    from ray.tune.schedulers import ASHAScheduler

    for grace, eta, epochs in [(1, 4.0, 3), (1, 2.0, 8), (2, 3.0, 20), (1, 4.0, 20)]:
        ray_asha = ASHAScheduler(time_attr="epoch", max_t=epochs + 1, grace_period=grace, reduction_factor=eta)
        milestones = sorted(m for m, _ in ray_asha._brackets[0]._rungs)
        assert est.rungs(grace, eta, epochs) == [int(m) for m in milestones if m < epochs + 1]
    config = load_experiment(
        QUICKSTART,
        ["training.epochs=8", "search.scheduler={grace_period: 1, reduction_factor: 2, with_ablation: true}"],
    )
    # rungs at 1, 2, 4, 8: all run epoch 1, half epoch 2, a quarter epochs 3-4, an eighth 5-8
    assert est.expected_epochs(config) == pytest.approx(1 + 1 / 2 + 2 / 4 + 4 / 8)
    assert est.rung_fractions(1, 2.0, 8) == [1 / 2, 1 / 4, 1 / 8, 1 / 16]
    assert est.expected_epochs(load_experiment(QUICKSTART)) == 3.0  # no scheduler


SPACE = "search.space={method.lora.dropout: {type: float, low: 0, high: 0.2}}"


@pytest.mark.parametrize(
    "overrides",
    [
        ["task.languages=[jav, sun]"],
        [SPACE, "search.num_samples=2", "task.languages=[jav, sun]"],  # a search per cell
        [SPACE, "search.grid={method.kind: [zero_shot, lora]}", "search.num_samples=2"],  # zero-shot: once a seed
        ["search.grid={}", SPACE, "search.num_samples=3"],
        ["search.grid={}", "search.num_samples=2"],
    ],
    ids=["grid", "grid-and-space", "a-cell-reads-no-space-key", "space", "fixed"],
)
def test_the_estimates_searches_are_the_planned_ones(overrides):
    config = load_experiment(QUICKSTART, overrides)
    planned, made = plan_searches(config), est.estimate(config, None).searches
    assert [s.name for s in made] == [s.name for s in planned]
    assert [s.trials for s in made] == [s.expected_trials for s in planned]


def test_the_trials_are_laid_onto_the_slots():
    assert est.makespan([10.0] * 5, 2) == 30.0
    assert est.makespan([30.0, 10.0, 10.0, 10.0], 2) == 30.0
    assert est.makespan([5.0], 4) == 5.0


def test_the_estimate_adds_up_each_trials_phases_and_schedules_them():
    config = load_experiment(QUICKSTART, ["model.stage1=null"])
    counted = est.estimate(config, {"CPU": 2.0, "GPU": 0.0})
    assert counted.trials == 9 and counted.total("steps") == 9 * 3 * math.ceil(500 / 16)
    assert not counted.timed and "no step time known: run with --estimate" in "\n".join(counted.lines())
    time = est.StepTime(step=0.5, startup=4.0, setup=1.0, validation=2.0, checkpoint=0.5, test=1.5, source="test")
    times = {setup: time for setup in counted.setups}
    timed = est.estimate(config, {"CPU": 2.0, "GPU": 0.0}, times)
    trial = 1.0 + 96 * 0.5 + 3 * (2.0 + 0.5) + 1.5  # setup, steps, validation and checkpoint per epoch, test
    assert timed.searches[0].slots == 4  # 2 CPUs, 0.5 per trial
    assert timed.trial_seconds() == pytest.approx(9 * trial + 4 * 4.0)  # the first on each slot starts a process
    assert timed.wall() == pytest.approx(4.0 + 3 * trial)  # 9 trials on 4 slots: 3 rounds
    assert timed.metrics()["estimate/wall_seconds"] == pytest.approx(4.0 + 3 * trial)
    assert est.versus(110.0, 100.0) == "estimate: 1 min 50 s, actual 1 min 40 s (+10 %)"
    # stage 1 first (not trained yet): one LoRA trial of stage 1's schedule, alone on the cluster
    alone = {setup: est.StepTime(0.5, 4.0, 1.0, 2.0, 0.5, 1.5, "test", alone=0.5) for setup in counted.setups}
    first = est.estimate(load_experiment(QUICKSTART), {"CPU": 2.0, "GPU": 0.0}, alone, stage1=True)
    stage1 = 4 * math.ceil(500 / 16) * 0.5 + 4 * (2.0 + 0.5) + 1.0 + 1.5 + 4.0  # 4 epochs, batch 16
    assert first.stage1 == pytest.approx(0.5 * stage1) and first.wall() == pytest.approx(0.5 * stage1 + 4 + 3 * trial)


def test_step_times_are_read_from_an_earlier_sweeps_mlflow_records(tmp_path):
    from mlflow.entities import Metric

    config = load_experiment(QUICKSTART, ["model.stage1=null"])
    flare = est.setup_of(load_experiment(QUICKSTART, ["model.stage1=null", "method.kind=flare"]))
    lora = est.setup_of(load_experiment(QUICKSTART, ["model.stage1=null", "method.kind=lora"]))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment(config.tracking.experiment_name)
    params = {
        "model.name_or_path": "tiny:xlm-roberta",
        "training.precision": "fp32",
        "scaling.num_workers": "1",
        "scaling.cpus_per_worker": "0.5",
        "scaling.use_gpu": "False",
        "scaling.gpus_per_worker": "None",
    }
    parent = client.create_run(experiment).info.run_id  # its params and summed time/*: not a trial's
    for key, value in {**params, "method.kind": "flare"}.items():
        client.log_param(parent, key, value)
    client.log_metric(parent, "time/wall", 1000.0)
    client.log_metric(parent, "time/train_steps", 900.0)
    client.set_terminated(parent, "FINISHED")
    for kind, train_steps, startup in (("flare", 30.0, 3.0), ("flare", 50.0, 0.2), ("lora", 10.0, 3.0)):
        run = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
        for key, value in {**params, "method.kind": kind}.items():
            client.log_param(run, key, value)
        steps = [Metric("train/optimizer_steps", 32.0, 0, epoch) for epoch in (1, 2, 3)]
        times = {"train_steps": train_steps, "data": 2.0, "startup": startup, "validation": 6.0, "checkpoint": 1.5}
        times["wall"] = 100.0
        client.log_batch(run, metrics=steps + [Metric(f"time/{k}", v, 0, 0) for k, v in times.items()])
        client.set_terminated(run, "FINISHED")
    unfinished = client.create_run(experiment).info.run_id  # a running trial: not read
    client.log_param(unfinished, "model.name_or_path", "tiny:xlm-roberta")

    times = est.read_previous(client, config.tracking.experiment_name, [flare, lora])
    assert times[flare].step == pytest.approx((30 + 2 + 50 + 2) / (2 * 96))
    assert times[lora].step == pytest.approx((10 + 2) / 96)
    assert times[flare].validation == pytest.approx(6.0 / 3) and times[flare].checkpoint == pytest.approx(0.5)
    assert times[flare].startup == 3.0  # a new process's (the second trial ran in the first one's)
    assert "2 earlier trial(s)" in times[flare].source
    # and the sweep's estimate takes them: every cell of the quickstart is timed
    made = est.known_times(config, est.estimate(config, None).examples, False, client.tracking_uri, print)
    assert set(made) == {flare, lora}


def test_a_calibration_is_cached_by_its_fingerprint_and_read_without_ray(tmp_path):
    config = load_experiment(QUICKSTART, ["model.stage1=null", f"storage_path={tmp_path}"])
    (setup,) = [s for s in est.estimate(config, None).setups if s.method == "lora"]
    lora = load_experiment(QUICKSTART, ["model.stage1=null", f"storage_path={tmp_path}", "method.kind=lora"])
    key = est.calibration_fingerprint(lora, "jav")
    assert key != est.calibration_fingerprint(lora.model_copy(update={"name": "other"}), "ind")
    est.save_calibration(tmp_path, key, est.StepTime(0.25, 1.0, 2.0, 3.0, 0.1, 1.0, "calibrated"))
    times = est.known_times(config, {setup: lora}, False, None, print)
    assert times == {setup: est.StepTime(0.25, 1.0, 2.0, 3.0, 0.1, 1.0, "calibrated")}
    assert est.known_times(config, {setup: lora}, False, None, print, copies=4) == {}  # 4 at once: another


def test_the_calibration_times_a_few_steps_of_the_trials_own_setup():
    from flare_ray.training.calibrate import calibrate

    config = load_experiment(
        REPO / "tests" / "configs" / "small-flare-search.yaml", ["search.space={}", "search.scheduler=null"]
    )
    seconds = calibrate(config, "jav", steps=2)
    assert set(seconds) == {"startup", "step", "setup", "validation", "checkpoint", "test"}
    assert all(seconds[k] > 0 for k in ("step", "setup", "validation", "checkpoint", "test"))


def test_the_dry_run_counts_the_sweep_and_says_where_step_times_come_from(tmp_path, capsys):
    text = dry_run_text(load_experiment(QUICKSTART))
    assert "# cost:\n#   all: 9 trials, 27 epochs, 864 optimizer steps\n" in text
    assert "#   step time of tiny:xlm-roberta lora fp32 1 x (0.5 CPU, 0 GPU): no step time known" in text
    adaptive = load_experiment(QUICKSTART, ["search.seeds={min: 2, max: 5}"])
    text = dry_run_text(adaptive)  # the range: every cell's min seeds, then at most max
    assert (
        "# cost (min seeds per cell):\n#   all: 6 trials" in text
        and "# cost (max seeds per cell):\n#   all: 15" in text
    )
    assert main([str(QUICKSTART), "--dry-run", "--set", f"storage_path={tmp_path}"]) == 0
    assert "#   all: 9 trials, 27 epochs, 864 optimizer steps" in capsys.readouterr().out


def test_the_dry_run_knows_a_stage1_folder_by_the_file_stage1_writes_last(tmp_path):
    from flare_ray.training.stage1 import STAGE1_INFO

    assert est.STAGE1_INFO == STAGE1_INFO  # the dry run imports no torch, so not flare_ray.training.stage1
    config = load_experiment(QUICKSTART, [f"storage_path={tmp_path}"])
    assert est.stage1_pending(config, exact=False)
    (tmp_path / "stage1" / "0123").mkdir(parents=True)
    (tmp_path / "stage1" / "0123" / STAGE1_INFO).write_text("{}")
    assert not est.stage1_pending(config, exact=False)
