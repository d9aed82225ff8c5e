"""Machine translation of task splits with NLLB-200, on Ray: ``python -m flare_ray.translate CONFIG.yaml``.

* :mod:`.config`: the YAML configuration (pydantic) and its ``--help`` text;
* :mod:`.records`: what is translated in each role, and how translations come back;
* :mod:`.markers`: EasyProject-style answer markers for QA (every role; the test answers projected into English);
* :mod:`.translator`: the Ray Data job (one model per actor);
* :mod:`.store`: provenance and cache of the splits written at
  :func:`flare_ray.tasks.base.mt_split_path` (where the task's ``mt`` recipe reads them);
* :mod:`.pipeline`: validate, reuse, translate, write;
* the command line: :mod:`flare_ray.cli.translate`.

Importing this package loads neither Ray nor torch.
"""
