"""The per-deployment serving options (``%deploy NAME --max-batch-size N --max-wait-ms MS
--log-sample F``) and
their bounds, defined once: the management body validator (``control/transitions.py``) enforces
them and the OpenAPI document (``request/openapi.py``) publishes them.
"""

from __future__ import annotations

DEPLOY_OPTIONS = ("max_batch_size", "max_wait_ms", "log_sample")
MAX_BATCH_SIZE_MIN = 1
MAX_BATCH_SIZE_MAX = 1 << 20
MAX_WAIT_MS_MIN = 0
MAX_WAIT_MS_MAX = 10_000
# ``--log-sample F``: the share of requests the inference log keeps (kernel_magics/quality)
LOG_SAMPLE_MIN = 0.0
LOG_SAMPLE_MAX = 1.0

# ``%deploy NAME@V --canary P``: the share of requests (percent) the canary answers; 100 would be
# a deploy, 0 no canary
CANARY_MIN = 1
CANARY_MAX = 99
