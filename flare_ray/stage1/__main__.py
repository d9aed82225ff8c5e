import sys

from flare_ray.cli.stage1 import main

sys.exit(main())
