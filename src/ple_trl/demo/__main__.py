"""`python -m ple_trl.demo`: `ple-trl demo`."""

from .run import main

raise SystemExit(main())
