from flare_ray.cli.tune import exit_promptly, main

exit_promptly(main())
