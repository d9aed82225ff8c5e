"""``python -m flare_ray.translate CONFIG.yaml``: see :mod:`flare_ray.translate.cli`."""

from .cli import main

if __name__ == "__main__":
    main()
