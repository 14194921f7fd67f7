"""``python -m kernel_magics.serving``: run the supervisor of the inference process."""

import sys

from kernel_magics.exiting import skip_exit_collection
from kernel_magics.serving.process.supervisor import main

code = main()
skip_exit_collection()
sys.exit(code)
