"""`python -m comem_cli.bench.latency fit|check`: the cost model's calibration fit and check."""

from comem_cli.bench.latency.calibration import main

raise SystemExit(main())
