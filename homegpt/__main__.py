import sys

from homegpt.cli import main

sys.exit(main())
