import sys

from laudnet.cli import main

sys.exit(main())
