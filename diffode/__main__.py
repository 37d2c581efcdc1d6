import sys

from diffode.cli import main

sys.exit(main())
