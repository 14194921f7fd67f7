"""One settings object for every part of kernel-magics.

Each field has a default, an environment variable ``KERNEL_MAGICS_<FIELD>`` that overrides it, and
(in a notebook) a ``%config KernelMagics.<field>`` trait that overrides both for that kernel.
The inference process reads the same object, so it never needs IPython to know where things are.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOME = Path.home() / ".kernel-magics"
EXPERIMENT_NAME = "kernel-magics"
DEPLOYMENTS_EXPERIMENT_NAME = "kernel-magics-deployments"
LIVE_ALIAS = "production"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# Set by the kernel side when it restarts a crashed process: the port to bind again if free.
PREFERRED_PORT_ENV = "KERNEL_MAGICS_PREFERRED_PORT"
# The values of ``gen_dtype``: the precision a language model is served in.
GEN_DTYPES = ("auto", "bfloat16", "float32")
# gen_threads = 0: served weights from this size on decode on every usable core.
# Served weights from this size on make a "large" language model: its engine gets every core
# (gen_threads) and, in float32, a blocked copy of its weights (gen_blocked_weights).
GEN_LARGE_WEIGHTS_BYTES = 32 * 2**20


@dataclass(frozen=True)
class Settings:
    """Where the store lives and how the inference process listens.

    ``tracking_uri`` empty means the embedded default store: SQLite plus an artifact folder,
    both inside ``home``. Any MLflow tracking URI works instead.
    """

    home: Path = field(default_factory=lambda: DEFAULT_HOME)
    tracking_uri: str = ""
    # Where deployed models run: "local" is the built-in inference process, "ray" a Ray Serve
    # cluster at ``ray_address`` (targets/).
    target: str = "local"
    # Address of the Ray cluster the "ray" target deploys to (``ray.init(address=...)``, e.g.
    # "127.0.0.1:6379" or "auto"); its Serve HTTP proxy listens on ``host`` and ``port``.
    ray_address: str = ""
    host: str = "127.0.0.1"
    port: int = 0
    # Binding anywhere but loopback exposes the models to the network: it needs this set too,
    # and then every prediction needs a token whatever predict_requires_token says.
    allow_remote: bool = False
    workers: int = 1
    # %load_ext starts (or reattaches to) the inference process in the background, so the
    # first %deploy finds it warm instead of paying ~3 s of torch imports.
    autostart: bool = True
    max_batch_size: int = 64
    max_wait_ms: float = 1.0
    torch_threads: int = 1
    predict_requires_token: bool = True
    # /metrics labels its series with token names and model names: it takes a token (any scope)
    # unless this is off, for a Prometheus scraper on this machine; beyond loopback it always does.
    metrics_requires_token: bool = True
    max_body_bytes: int = 64 * 1024 * 1024
    max_rows: int = 65536
    request_timeout_s: float = 30.0
    # Connections of the inference process (per worker): a client that has not sent a whole
    # request head within header_timeout_s of starting it (or of connecting) gets 408; an idle
    # keep-alive connection closes after idle_timeout_s; past max_connections open ones a new
    # client gets 503 instead of a reset (the cap never exceeds what the open-file limit allows).
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    max_connections: int = 10000
    # Generative models (kernel_magics/generative): sequences decoded together in one forward,
    # the KV-cache budget in tokens (prompt + max_tokens of every running sequence), and how
    # many requests may wait for a slot before new ones get 429.
    gen_max_running: int = 16
    gen_kv_cache_tokens: int = 32768
    gen_max_queued: int = 64
    # The precision a language model's weights are served in: "auto" keeps the checkpoint's;
    # "bfloat16" halves their memory and, on a CPU with native bfloat16 (AVX-512 BF16 / AMX),
    # multiplies them through oneDNN's packed layout (generative/linear.py); "float32".
    gen_dtype: str = "auto"
    # Intra-op threads of a language model's engine thread. 0 (auto): every core the process
    # may use when the served weights take GEN_LARGE_WEIGHTS_BYTES or more (a decode step then
    # waits on reading them, and two cores read them about twice as fast), else torch_threads
    # (a small model's step is short ops, and a second thread only contends with the event
    # loop). Measured in docs/generative.md.
    gen_threads: int = 0
    # float32 weights of GEN_LARGE_WEIGHTS_BYTES or more also kept in oneDNN's blocked layout,
    # which multiplies 4 rows or more faster than the plain copy (fewer, slower): decode steps
    # of the running batch read it; one stream and prefills read the plain copy. Twice the
    # weights' memory; False keeps one copy. Measured in docs/generative.md.
    gen_blocked_weights: bool = True
    # Prompt tokens a language model's engine keeps the keys and values of after their prefill,
    # so that a later prompt starting the same way (a system prompt, a conversation's earlier
    # turns, a repeated prompt) computes only the rest: generative/prefix_cache.py. Each costs
    # the model's KV bytes per token (32 KiB for the 29 M benchmark model in float32); 0: off.
    gen_prefix_cache_tokens: int = 4096
    # Canaries that judge themselves (``%deploy NAME@V --canary P --analyze``): the window and
    # the requests each arm needs when the deploy does not say; how much worse than the live
    # version a canary may be before it is rolled back (error rate: absolute margin; p99: a
    # ratio, and at least the slack, so that two sub-millisecond arms never differ "2x" by
    # noise; accuracy: absolute margin); how often the inference process looks.
    canary_window_s: float = 60.0
    canary_min_requests: int = 200
    canary_error_rate_margin: float = 0.02
    canary_p99_ratio: float = 2.0
    canary_p99_slack_ms: float = 10.0
    canary_accuracy_margin: float = 0.05
    # drift: how much further (PSI, a ratio and at least the margin) the canary's predictions
    # may be from the reference profile's than the live version's
    canary_drift_ratio: float = 2.0
    canary_drift_margin: float = 0.1
    canary_judge_interval_s: float = 5.0
    # The inference log (kernel_magics/quality, docs/quality.md): the share of each served
    # version's requests written to home/quality/inference_log.db (0 turns it off; %deploy
    # --log-sample overrides it per deploy), the rows kept per model (the oldest are evicted
    # first), and the samples a worker's writer may have waiting (beyond: dropped and counted).
    # 0.05 by measurement (bench/results-quality.md): a logged 1-row request costs the worker
    # about 22 µs of CPU on top of ~75 µs, so logging every request would cost ~30 %.
    log_sample: float = 0.05
    log_max_rows: int = 100_000
    log_queue: int = 10_000
    # Drift (quality/drift.py): a feature is flagged when its test (KS for numbers, chi² for
    # categories) has p < drift_p_value AND its PSI >= drift_psi: significant and large
    # enough to matter (0.1 is the usual "moderate shift" line, 0.25 a major one).
    drift_p_value: float = 0.01
    drift_psi: float = 0.1
    # The inference process's drift gauges (km_drift_psi, km_drift_flagged on /metrics): every
    # drift_interval_s (0 turns them off) over each served version's newest drift_window_rows
    # logged rows, when the version has a reference profile.
    drift_interval_s: float = 60.0
    drift_window_rows: int = 10_000

    # -- derived paths -----------------------------------------------------------------------
    @property
    def store_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{self.sqlite_file}"

    @property
    def sqlite_file(self) -> Path:
        """The embedded store's database (used when ``tracking_uri`` is empty)."""
        return self.home / "mlflow.db"

    @property
    def artifact_root(self) -> Path:
        return self.home / "artifacts"

    @property
    def state_file(self) -> Path:
        """Written by the running inference process: url, pid, port; a new kernel reads it."""
        return self.home / "server.json"

    @property
    def token_file(self) -> Path:
        return self.home / "token"

    @property
    def tokens_file(self) -> Path:
        """Named tokens (their SHA-256 only), see ``serving/tokens.py``."""
        return self.home / "tokens.json"

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")

    @property
    def requires_predict_token(self) -> bool:
        return self.predict_requires_token or not self.is_loopback

    @property
    def requires_metrics_token(self) -> bool:
        return self.metrics_requires_token or not self.is_loopback

    def check_bind(self) -> None:
        """Refuse a non-loopback address unless ``allow_remote`` says it is meant."""
        if not self.is_loopback and not self.allow_remote:
            from kernel_magics.errors import InvalidInput

            raise InvalidInput(
                f"host {self.host!r} would expose the inference process beyond this machine: "
                "set allow_remote (KERNEL_MAGICS_ALLOW_REMOTE=1, or --allow-remote) to mean it; "
                "every request then needs the token"
            )

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "server.log"

    @property
    def drift_file(self) -> Path:
        """The inference process's latest drift check per served version (its drift monitor
        writes it, ``/v1/status`` reads it)."""
        return self.run_dir / "drift.json"

    @property
    def run_dir(self) -> Path:
        """Unix sockets of the supervisor and its workers."""
        return self.home / "run"

    @property
    def control_socket(self) -> Path:
        return self.run_dir / "control.sock"

    @property
    def canary_dir(self) -> Path:
        """The analysis of each judged canary (``serving/control/canary_watch.py``), kept so a
        restarted process goes on where it was."""
        return self.home / "canary"

    @property
    def lock_dir(self) -> Path:
        return self.home / "locks"

    @property
    def cache_dir(self) -> Path:
        """Local copies of artifacts that live on a remote artifact store."""
        return self.home / "cache"

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def as_env(self) -> dict[str, str]:
        """Environment that gives a child process exactly these settings."""
        env = {}
        for f in dataclasses.fields(self):
            env[f"KERNEL_MAGICS_{f.name.upper()}"] = str(getattr(self, f.name))
        return env


def _coerce(kind: type | str, raw: str) -> object:
    kind_name = kind if isinstance(kind, str) else kind.__name__
    if "Path" in kind_name:
        return Path(raw).expanduser()
    if "bool" in kind_name:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if "int" in kind_name:
        return int(raw)
    if "float" in kind_name:
        return float(raw)
    return raw


def load_settings(**overrides: object) -> Settings:
    """Defaults, then ``KERNEL_MAGICS_*`` (and ``MLFLOW_TRACKING_URI``), then ``overrides``."""
    values: dict[str, object] = {}
    if os.environ.get("MLFLOW_TRACKING_URI"):
        values["tracking_uri"] = os.environ["MLFLOW_TRACKING_URI"]
    for f in dataclasses.fields(Settings):
        raw = os.environ.get(f"KERNEL_MAGICS_{f.name.upper()}")
        if raw is not None and raw != "":
            values[f.name] = _coerce(f.type, raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "home" in values:
        values["home"] = Path(str(values["home"])).expanduser().resolve()
    return Settings(**values)  # type: ignore[arg-type]
