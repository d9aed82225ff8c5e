"""Per trial and epoch, from MLflow: the method, training tokens/s, peak GPU memory, loss and validation metric."""

import sys

import mlflow

uri, experiment = sys.argv[1:3]
mlflow.set_tracking_uri(uri)
client = mlflow.MlflowClient()
runs = mlflow.search_runs(
    experiment_names=[experiment], filter_string="tags.flare_ray.trial_id != ''", output_format="list"
)
for run in sorted(runs, key=lambda r: r.data.tags.get("flare_ray.trial_id", "")):
    method = run.data.tags.get("flare_ray.method")
    history = {
        k: {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)}
        for k in ("train/tokens_per_second", "train/peak_memory_gb", "train/loss", "train/seconds")
    }
    for step in sorted(history["train/tokens_per_second"]):
        print(
            f"{experiment} {method:6s} epoch {step}: {history['train/tokens_per_second'][step]:9.0f} tokens/s  "
            f"peak {history['train/peak_memory_gb'].get(step, float('nan')):6.2f} GiB  "
            f"loss {history['train/loss'].get(step, float('nan')):.3f}  {history['train/seconds'].get(step, float('nan')):.1f} s"
        )
    print(
        f"{experiment} {method:6s} status {run.info.status}; test: "
        + ", ".join(f"{k}={v:.2f}" for k, v in sorted(run.data.metrics.items()) if k.startswith("test/"))
    )
