import sys

from tracklog.cli import main

sys.exit(main())
