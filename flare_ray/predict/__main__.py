"""``python -m flare_ray.predict``: predict with a trial's adapter, implemented in :mod:`flare_ray.cli.predict`."""

import sys

from flare_ray.cli.predict import main

sys.exit(main())
