from flare_ray.cli.stage1 import main
from flare_ray.cli.tune import exit_promptly

exit_promptly(main())
