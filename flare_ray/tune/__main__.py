import sys

from flare_ray.cli.tune import main

sys.exit(main())
