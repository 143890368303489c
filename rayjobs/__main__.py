import sys

from rayjobs.cli import main

sys.exit(main())
