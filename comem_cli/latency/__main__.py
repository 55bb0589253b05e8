"""`python -m comem_cli.latency fit|check`: the cost model's calibration fit and check."""

from comem_cli.latency.paper import main

raise SystemExit(main())
