"""The inference process, by plane:

- ``request/``: the request path in a worker (HTTP, codecs, batching, models, metrics);
- ``control/``: the control plane (deploy / rollback / undeploy and the store lifecycle);
- ``process/``: process management (supervisor, workers, the unix-socket calls between them).

``tokens.py`` (who may call) is shared by all three and by the kernel side.
"""

from pathlib import Path

# A tiny exported model (N×4 → N×2) shipped as package data: a worker loads it at start-up to
# warm the pt2 deserializer.
WARMUP_MODEL = Path(__file__).with_name("warmup.pt2")
