"""``python -m flare_ray.predict``: predict with a trial's adapter, implemented in :mod:`flare_ray.cli.predict`.

A folder without ``__init__.py``: only the entry point, like :mod:`flare_ray.tune`'s."""
import sys

from flare_ray.cli.predict import main

sys.exit(main())
