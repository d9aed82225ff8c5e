"""Use the winner: a trial's adapter, found in MLflow, predicting on new target-language text.

``python -m flare_ray.predict`` (:mod:`flare_ray.cli.predict`) reads it top to bottom:

1. :func:`.tables.read_rows`: the input table (jsonl, csv or tsv, by extension);
2. :func:`.adapters.fetch_record`: the trial record (``trial_config.json``: the trial's experiment config and
   language) of a registered model (``name``, ``name/version``) or of a run (its id), downloaded alone;
3. :mod:`.inputs`: which columns the task and the method read (the target fields, and the English
   ``source_<field>`` columns for the methods that read a source), the models the record names, and the NLLB
   model that would make a missing English side; bad input fails here with one line naming the file, the
   column or the option, before any model library is imported (this module imports none);
4. :func:`.adapters.download_weights`, then :func:`.predictor.predict`: records in the task's schema
   (:mod:`flare_ray.tasks.base`), the English side translated by :func:`.english.english_sources` where the
   input has none (NLLB-200 on Ray Data, the job of :mod:`flare_ray.translate`, cached per segment), the
   adapter loaded by the trial's own setup (:func:`~flare_ray.training.setup.build_trial`) and the predictions
   of the evaluation's own path (:func:`~flare_ray.training.evaluate.predict_records`), one per row; with
   ``--scores``, :func:`.scores.scored_predictions`: the same predictions from the same logits, with the class
   probabilities or the extractive answer's probability.

This package sits above the trial recipe (:mod:`flare_ray.training`), which never imports the translator
or the model registry. Importing it imports nothing: ``python -m flare_ray.predict --help`` stays fast.
"""
