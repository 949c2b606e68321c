import sys

from hpl_train.cli import main

sys.exit(main())
