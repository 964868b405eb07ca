"""`python -m orchestrator ...` is `sla-sweep ...` (for machines where the console script is not installed)."""

from orchestrator.cli import main

raise SystemExit(main())
