"""Machine translation of task splits with NLLB-200, on Ray: ``python -m flare_ray.translate CONFIG.yaml``.

* :mod:`.config`: the YAML configuration (pydantic) and its ``--help`` text;
* :mod:`.languages`: NLLB-200 codes of the paper's languages, with fallbacks;
* :mod:`.records`: what is translated in each role, and how translations come back;
* :mod:`.markers`: EasyProject-style answer markers for QA (train and validation; test inputs carry none);
* :mod:`.translator`: the Ray Data job (one model per actor);
* :mod:`.store`: output layout (:func:`mt_split_path`), provenance and cache;
* :mod:`.pipeline`: validate, reuse, translate, write;
* :mod:`.cli`: the command line.

Importing this package loads neither Ray nor torch (``flare_ray.tasks`` imports
:func:`mt_split_path` from here).
"""

from .store import mt_split_path

__all__ = ["mt_split_path"]
