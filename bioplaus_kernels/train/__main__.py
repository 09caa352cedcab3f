"""``python -m bioplaus_kernels.train``: the ``bioplaus`` command line."""
from .cli import main

raise SystemExit(main())
