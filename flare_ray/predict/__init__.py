"""Use the winner: a trial's adapter, found in MLflow, predicting on new target-language text.

``python -m flare_ray.predict`` (:mod:`flare_ray.cli.predict`) reads it top to bottom:

1. :func:`.tables.read_rows`: the input table (jsonl, csv or tsv, by extension);
2. :func:`.adapters.fetch_adapter`: the adapter of a registered model (``name``, ``name/version``) or of a
   run (its id), downloaded with its ``trial_config.json`` (the trial's experiment config and language);
3. :func:`.predictor.plan_input`: which columns the task and the method read (the target fields, and the
   English ``source_<field>`` columns for the methods that read a source); bad input fails here with one
   line naming the file and the column, before any model is loaded;
4. :func:`.predictor.predict`: records in the task's schema (:mod:`flare_ray.tasks.base`), the English side
   translated by :func:`.english.english_sources` where the input has none (NLLB-200 on Ray Data, the job
   of :mod:`flare_ray.translate`, cached per segment), the adapter loaded by the trial's own setup
   (:func:`~flare_ray.training.setup.build_trial`) and the predictions of the evaluation's own path
   (:func:`~flare_ray.training.evaluate.predict_records`): one per row.

This package sits above the trial recipe (:mod:`flare_ray.training`), which never imports the translator
or the model registry. Importing it imports nothing: ``python -m flare_ray.predict --help`` stays fast.
"""
