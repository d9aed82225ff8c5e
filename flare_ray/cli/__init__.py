"""The commands: ``python -m flare_ray.tune`` (:mod:`.tune`), ``python -m flare_ray.stage1`` (:mod:`.stage1`)
and ``python -m flare_ray.translate`` (:mod:`.translate`). Each parses its arguments, loads and checks its
YAML before any expensive work, and calls the package that does the work."""
