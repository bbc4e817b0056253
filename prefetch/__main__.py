import sys

from prefetch.cli import main

sys.exit(main())
