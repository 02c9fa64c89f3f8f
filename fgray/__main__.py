"""python -m fgray"""

import sys

from fgray.cli import main

sys.exit(main())
