"""`python -m maelab.report <sweep dir>`: aggregate a finished multirun (see maelab.report.sweep)."""

from maelab.report.sweep import main

raise SystemExit(main())
