"""The MAS side's settings, from the environment (the role writes /etc/myca-mas/mas.env)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from myca_ops.envvars import number


class SettingsError(ValueError):
    """A setting is missing or wrong; the message names the variable and the fix."""


@dataclass(frozen=True)
class Settings:
    dsn: str  # postgresql://user:password@host:port/db
    collectors: tuple[str, ...] = ()  # the collectors that should be running
    collector_interval_s: float = 10.0
    spool_dir: Path = Path("/var/lib/myca-mas/spool")
    moshi_url: str = ""  # ws://gpu-host:8998/api/chat: its health (myca_ops.voice.health, no session)
    bridge_url: str = ""  # http://bridge:8999: its /healthz
    status_ttl_s: float = 2.0
    check_timeout_s: float = 2.0
    events_token: str = ""  # what the bridge must send to POST events; empty: the route refuses all
    prometheus_url: str = ""  # http://127.0.0.1:9090: its firing alerts are listed in the status; empty: none
    backup_dir: Path | None = None  # myca-mas backup's folder: its last success on /metrics; None: no backups

    @property
    def stale_after_s(self) -> float:
        """A collector whose last heartbeat is older than this is not running."""
        return 3 * self.collector_interval_s + self.check_timeout_s

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        dsn = env.get("MYCA_MAS_DSN", "")
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise SettingsError(
                "MYCA_MAS_DSN must be a postgresql:// URL (the mas role writes it to /etc/myca-mas/mas.env)"
            )

        def seconds(name: str, default: float) -> float:
            try:
                return number(env, name, default, positive=True)
            except ValueError as exc:
                raise SettingsError(str(exc)) from None

        return cls(
            dsn=dsn,
            collectors=tuple(c for c in env.get("MYCA_MAS_COLLECTORS", "").split(",") if c),
            collector_interval_s=seconds("MYCA_MAS_COLLECTOR_INTERVAL_S", 10.0),
            spool_dir=Path(env.get("MYCA_MAS_SPOOL_DIR", "/var/lib/myca-mas/spool")),
            moshi_url=env.get("MYCA_MAS_MOSHI_URL", ""),
            bridge_url=env.get("MYCA_MAS_BRIDGE_URL", "").rstrip("/"),
            status_ttl_s=seconds("MYCA_MAS_STATUS_TTL_S", 2.0),
            check_timeout_s=seconds("MYCA_MAS_CHECK_TIMEOUT_S", 2.0),
            events_token=env.get("MYCA_MAS_EVENTS_TOKEN", ""),
            prometheus_url=env.get("MYCA_MAS_PROMETHEUS_URL", "").rstrip("/"),
            backup_dir=Path(env["MYCA_MAS_BACKUP_DIR"]) if env.get("MYCA_MAS_BACKUP_DIR") else None,
        )
