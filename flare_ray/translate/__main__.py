"""``python -m flare_ray.translate CONFIG.yaml``: see :mod:`flare_ray.cli.translate`."""

from flare_ray.cli.translate import main

main()
