"""``python -m flare_ray.tune``: the sweep command, implemented in :mod:`flare_ray.cli.tune`."""
