"""``python -m flare_ray.translate CONFIG.yaml`` (= ``flare-ray translate``): see :mod:`flare_ray.cli.translate`."""

from flare_ray.cli.translate import main

main()
