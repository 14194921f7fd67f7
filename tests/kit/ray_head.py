"""Helpers of the Ray tests: settings for the session's head, the target, requests to its proxy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kernel_magics.config import Settings, load_settings


@dataclass(frozen=True)
class RayHead:
    address: str
    proxy_port: int
    temp_dir: str


def ray_settings(home: Path, head: RayHead) -> Settings:
    return load_settings(home=home, target="ray", ray_address=head.address, port=head.proxy_port)


def url(settings: Settings, name: str, route: str = ":predict") -> str:
    return f"http://127.0.0.1:{settings.port}/v1/models/{name}{route}"
