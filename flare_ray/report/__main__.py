import sys

from flare_ray.cli.report import main

sys.exit(main())
