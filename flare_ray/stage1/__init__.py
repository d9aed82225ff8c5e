"""``python -m flare_ray.stage1``: the stage-1 command, implemented in :mod:`flare_ray.cli.stage1`."""
