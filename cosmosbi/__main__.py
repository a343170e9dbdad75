import sys

from cosmosbi.cli import main

sys.exit(main())
