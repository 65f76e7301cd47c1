import sys

from pycandle.bench import main

sys.exit(main())
