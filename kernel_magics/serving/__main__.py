"""``python -m kernel_magics.serving``: run the supervisor of the inference process."""

import sys

from kernel_magics.serving.process.supervisor import main

sys.exit(main())
