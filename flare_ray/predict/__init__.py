"""``python -m flare_ray.predict``: see :mod:`flare_ray.cli.predict`."""
