import sys

from t2t.cli import main

sys.exit(main())
