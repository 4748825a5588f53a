"""`python -m models.cli ...` = `specserve ...` (torchrun uses this form: `torchrun ... -m models.cli train ...`)."""
import sys

from models.cli.main import main

sys.exit(main())
