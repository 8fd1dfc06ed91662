"""Configuration: defaults, YAML, environment overrides and messages that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import MOCK_BASE_URL, load_config, passthrough_overrides
from gateway.errors import ConfigError
from gateway.prices import Price


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_embedded_defaults_serve_the_demo_model() -> None:
    """With no file and no environment the only model is the in-process `demo`."""
    config = load_config(None, {})
    assert config.embedded_demo
    assert config.listed_models() == ["demo"]
    assert config.deployments["demo"].base_url == MOCK_BASE_URL
    assert config.server.port == 8080 and config.server.host == "127.0.0.1"


def test_yaml_deployments_models_and_aliases(tmp_path: Path) -> None:
    """Deployments expose their models; aliases map onto deployments with an upstream name."""
    path = write(
        tmp_path,
        """
deployments:
  a: {base_url: "http://a/v1/", api_key: "env:A_KEY", models: [m1]}
  b: {base_url: "https://b/v1", models: [m1, m2], weight: 3}
models:
  fast: {deployments: [b], upstream_model: m2}
""",
    )
    config = load_config(path, {"A_KEY": "secret-a"})
    assert config.deployments["a"].base_url == "http://a/v1"
    assert config.deployments["a"].api_key == "secret-a"
    assert config.models["m1"].deployments == ("a", "b")
    assert config.route_for("fast") is not None
    assert config.route_for("fast").upstream_name("fast") == "m2"  # type: ignore[union-attr]
    assert config.route_for("unknown") is None
    assert "secret-a" not in repr(config)


def test_environment_overrides_with_and_without_section() -> None:
    """LLM_GATEWAY_SERVER__PORT and LLM_GATEWAY_WORKERS both set server values, read as YAML."""
    config = load_config(
        None,
        {
            "LLM_GATEWAY_SERVER__PORT": "9001",
            "LLM_GATEWAY_WORKERS": "3",
            "LLM_GATEWAY_CORS_ORIGINS": "[https://x.example]",
            "LLM_GATEWAY_MASTER_KEY": "not a setting here",
        },
    )
    assert config.server.port == 9001
    assert config.server.workers == 3
    assert config.server.cors_origins == ("https://x.example",)


def test_passthrough_routes_every_model_name() -> None:
    """--upstream puts one deployment behind a wildcard route that passes names through."""
    config = load_config(
        None, {"KEY": "k"}, overrides=passthrough_overrides("http://h:1/v1", "KEY")
    )
    route = config.route_for("anything")
    assert route is not None and route.upstream_name("anything") == "anything"
    assert config.deployments["upstream"].api_key == "k"
    assert config.listed_models() == []


@pytest.mark.parametrize(
    ("text", "environ", "named"),
    [
        ("server: {port: abc}", {}, "server.port"),
        ("server: {port: 70000}", {}, "server.port"),
        ("server: {workers: 0}", {}, "server.workers"),
        ("server: {keepalive_interval: -1}", {}, "server.keepalive_interval"),
        ("server: {prot: 1}", {}, "server.prot"),
        ("server: {log_level: loud}", {}, "server.log_level"),
        ("deployments: {a: {models: [x]}}", {}, "deployments.a.base_url"),
        ("deployments: {a: {base_url: ftp://x}}", {}, "deployments.a.base_url"),
        (
            "deployments: {a: {base_url: 'http://x', api_key: 'env:NOPE'}}",
            {},
            "deployments.a.api_key",
        ),
        ("deployments: {a: {base_url: 'http://x', timeouts: {idle: 0}}}", {}, "timeouts.idle"),
        ("models: {m: {deployments: [ghost]}}", {}, "models.m.deployments"),
        ("limits: {key_rpm: 0}", {}, "limits.key_rpm"),
        ("limits: {ip_rpm: many}", {}, "limits.ip_rpm"),
        ("limits: {per_ip: 3}", {}, "limits.per_ip"),
        ("routing: {retries: {attempts: 0}}", {}, "routing.retries.attempts"),
        ("routing: {retries: {statuses: [200]}}", {}, "routing.retries.statuses"),
        ("routing: {breaker: {failures: 0}}", {}, "routing.breaker.failures"),
        (
            "deployments: {a: {base_url: 'http://x', breaker: {recovery: -1}}}",
            {},
            "deployments.a.breaker.recovery",
        ),
        ("models: {m: {deployments: [demo], strategy: fastest}}", {}, "models.m.strategy"),
        ("models: {m: {deployments: [demo], fallbacks: [m]}}", {}, "models.m.fallbacks"),
        ("bogus: 1", {}, "bogus"),
        ("- a list", {}, "top level"),
    ],
)
def test_bad_values_name_their_key(
    tmp_path: Path, text: str, environ: dict[str, str], named: str
) -> None:
    """Every invalid value fails with a message naming the key and the file."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ)
    assert named in str(caught.value)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"LLM_GATEWAY_AUTH_MODE": "on"}, "LLM_GATEWAY_AUTH_MODE"),
        ({"LLM_GATEWAY_REDISURL": "redis://x:6379/0"}, "LLM_GATEWAY_REDISURL"),
        ({"LLM_GATEWAY_AUTH__MODE": ""}, "LLM_GATEWAY_AUTH__MODE"),
        ({"LLM_GATEWAY_AUTH__MOD": "on"}, "LLM_GATEWAY_AUTH__MOD"),
        ({"LLM_GATEWAY_LIMITS__KEY_RPN": "5"}, "LLM_GATEWAY_LIMITS__KEY_RPN"),
        ({"LLM_GATEWAY_DEPLOYMENTS__A__BASE_URI": "http://x"}, "DEPLOYMENTS__A__BASE_URI"),
        ({"LLM_GATEWAY_PORT": "x"}, "LLM_GATEWAY_PORT"),
        ({"LLM_GATEWAY_AUTH__MODE": "yes please"}, "LLM_GATEWAY_AUTH__MODE"),
    ],
)
def test_environment_mistakes_name_the_variable(
    tmp_path: Path, environ: dict[str, str], named: str
) -> None:
    """A variable that sets no setting, is empty or holds a bad value fails naming itself."""
    path = write(tmp_path, "server: {workers: 1}")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ)
    assert named in str(caught.value)
    assert str(path) not in str(caught.value)


def test_environment_settings_that_exist_still_apply() -> None:
    """Known variables (short and long forms, nested deployment keys) are taken as before."""
    config = load_config(
        None,
        {
            "LLM_GATEWAY_CONFIG": "ignored-here.yaml",
            "LLM_GATEWAY_AUTH__MODE": "on",
            "LLM_GATEWAY_ROUTING__RETRIES__ATTEMPTS": "2",
            "LLM_GATEWAY_CACHE__MODEL_TTLS__DEMO": "5",
            "LLM_GATEWAY_DEPLOYMENTS__D__BASE_URL": "http://h:1/v1",
            "LLM_GATEWAY_DEPLOYMENTS__D__TIMEOUTS__IDLE": "3",
        },
    )
    assert config.auth.mode == "on" and config.routing.retries.attempts == 2
    assert config.cache.ttl_for("demo") == 5.0
    assert config.deployments["d"].timeouts.idle == 3.0


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config path that does not exist fails with the path in the message."""
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        load_config(tmp_path / "missing.yaml", {})


def test_secrets_never_appear_in_errors(tmp_path: Path) -> None:
    """A mistyped value that may be a secret is described, not echoed."""
    path = write(tmp_path, "server: {port: sk-very-secret}")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert "sk-very-secret" not in str(caught.value)


def test_cache_streams_and_limits_sections(tmp_path: Path) -> None:
    """cache:, streams: and limits: load with per-model TTLs; no limit applies unless configured."""
    path = write(
        tmp_path,
        """
cache: {mode: all, scope: global, ttl: 60, model_ttls: {demo: 5}, backend: memory}
streams: {resumable: true, models: [demo], grace: 10, retention: 30}
limits: {key_rpm: 100, ip_rpm: 50, client_ip_header: X-Real-IP}
""",
    )
    config = load_config(path, {})
    assert config.cache.ttl_for("demo") == 5 and config.cache.ttl_for("other") == 60
    assert config.cache.scope == "global" and config.cache.mode == "all"
    assert config.streams.resumable and config.streams.models == ("demo",)
    assert config.limits.key_rpm == 100 and config.limits.any
    assert not load_config(None, {}).limits.any  # no limit unless configured


def test_default_store_is_per_user_under_the_state_directory(tmp_path: Path) -> None:
    """The SQLite file goes to $XDG_STATE_HOME/llm-gateway/, else ~/.local/state/llm-gateway/."""
    state = tmp_path / "state"
    config = load_config(None, {"XDG_STATE_HOME": str(state)})
    assert Path(config.store.path) == state / "llm-gateway" / "llm-gateway.sqlite3"
    fallback = load_config(None, {"XDG_STATE_HOME": "relative/ignored"})
    expected = Path.home() / ".local" / "state" / "llm-gateway" / "llm-gateway.sqlite3"
    assert Path(fallback.store.path) == expected
    named = load_config(write(tmp_path, "store: {path: /srv/keys.sqlite3}\n"), {})
    assert named.store.path == "/srv/keys.sqlite3"


def test_telemetry_section_is_validated(tmp_path: Path) -> None:
    """telemetry: is off by default; a bad endpoint or ratio names its key."""
    assert load_config(None, {}).telemetry.enabled is False
    good = load_config(
        write(tmp_path, "telemetry: {enabled: true, endpoint: 'http://otel:4318/v1/traces'}\n"), {}
    )
    assert good.telemetry.enabled and good.telemetry.endpoint == "http://otel:4318/v1/traces"
    with pytest.raises(ConfigError, match=r"telemetry\.endpoint"):
        load_config(write(tmp_path, "telemetry: {endpoint: 'otel:4317'}\n"), {})
    with pytest.raises(ConfigError, match=r"telemetry\.sample_ratio"):
        load_config(write(tmp_path, "telemetry: {sample_ratio: 2}\n"), {})


def test_postgresql_store_and_usage_delivery_settings(tmp_path: Path) -> None:
    """LLM_GATEWAY_DATABASE_URL selects PostgreSQL (a shared store); the stats section takes the
    spool and bus settings; a URL of another scheme names its key."""
    config = load_config(None, {"LLM_GATEWAY_DATABASE_URL": "postgresql://u:pw@db:5432/gw",
                                "LLM_GATEWAY_STATS__CLAIM_AFTER": "5",
                                "LLM_GATEWAY_STATS__SPOOL_DIR": "/var/spool/gw"})  # fmt: skip
    assert config.store.url == "postgresql://u:pw@db:5432/gw" and config.store.shared
    assert config.stats.claim_after == 5 and config.stats.spool_dir == "/var/spool/gw"
    assert "pw" not in repr(config.store)
    path = write(tmp_path, "store: {url: 'mysql://db/gw', pool_size: 4}\n")
    with pytest.raises(ConfigError, match=r"store\.url: must start with postgresql://"):
        load_config(path, {})
    with pytest.raises(ConfigError, match=r"stats\.bus"):
        load_config(write(tmp_path, "stats: {bus: maybe}\n"), {})


def test_every_store_stats_and_auth_setting_can_come_from_the_environment() -> None:
    """A setting added to a section's dataclass is settable as LLM_GATEWAY_SECTION__NAME at once
    (the strict check once refused the PostgreSQL URL and the spool settings)."""
    import dataclasses

    from gateway.config import AuthSettings, StatsSettings, StoreSettings, _known_path

    for section, settings in (
        ("store", StoreSettings),
        ("stats", StatsSettings),
        ("auth", AuthSettings),
    ):
        for field in dataclasses.fields(settings):
            assert _known_path([section, field.name]), f"{section}.{field.name}"


def test_prices_override_the_built_in_table(tmp_path: Path) -> None:
    """A ``prices:`` entry sets a model's USD per million tokens; bad entries name their key."""
    path = tmp_path / "c.yaml"
    path.write_text("prices: {my-model: {input: 1.5, cached_input: 0.5, output: 6}}\n")
    config = load_config(path, environ={})
    assert config.prices["my-model"] == Price(input=1.5, output=6.0, cached_input=0.5)
    path.write_text("prices: {my-model: {input: 1.5}}\n")
    with pytest.raises(ConfigError, match=r"prices\.my-model\.output: required"):
        load_config(path, environ={})
    path.write_text("prices: {my-model: {input: -1, output: 2}}\n")
    with pytest.raises(ConfigError, match=r"prices\.my-model\.input: expected a price"):
        load_config(path, environ={})
    path.write_text("prices: {my-model: {input: 1, output: 2, extra: 3}}\n")
    with pytest.raises(ConfigError, match=r"prices\.my-model\.extra: unknown setting"):
        load_config(path, environ={})


def test_every_settable_field_of_every_section_has_an_environment_name() -> None:
    """The strict environment check is read from the settings' own fields: every field of every
    section, nested ones included, is a path a variable may set, and a misspelt one is not."""
    from gateway.config import Config, _known_path
    from gateway.config.schema import entries

    def paths(cls: type, prefix: list[str]) -> list[list[str]]:
        found: list[list[str]] = []
        for name, entry in entries(cls).items():
            path = [*prefix, name, *(["x"] if entry.by_name else [])]
            found.append(path)
            assert not _known_path([*prefix, f"{name}_typo"]), ".".join(path)
            if entry.section is not None:
                found.extend(paths(entry.section, path))
        return found

    every = paths(Config, [])
    assert ["deployments", "x", "timeouts", "idle"] in every
    assert ["routing", "retries", "statuses"] in every
    for path in every:
        assert _known_path(path), ".".join(path)


def test_limits_are_named_once() -> None:
    """The rate limits a config sets are listed from the LimitSettings fields marked as limits."""
    config = load_config(
        None, {"LLM_GATEWAY_LIMITS__KEY_RPM": "5", "LLM_GATEWAY_LIMITS__IP_RPM": "2"}
    )
    assert config.limits.configured() == {"key_rpm": 5, "ip_rpm": 2} and config.limits.any


def test_a_redis_cache_without_redis_fails_at_load(tmp_path: Path) -> None:
    """cache.backend: redis needs store.redis_url; the check is made at load, naming the file
    (or the variable), not when the app is built."""
    path = write(tmp_path, "cache: {backend: redis}\n")
    with pytest.raises(ConfigError, match=r"gateway\.yaml: cache\.backend: redis needs Redis"):
        load_config(path, {})
    with pytest.raises(
        ConfigError, match=r"^environment LLM_GATEWAY_CACHE__BACKEND: cache\.backend"
    ):
        load_config(None, {"LLM_GATEWAY_CACHE__BACKEND": "redis"})
    with_redis = load_config(path, {"LLM_GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert with_redis.cache.backend == "redis"


def test_server_max_streams_is_a_deprecated_name_for_max_in_flight(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """server.max_in_flight caps requests in flight per worker; the old name max_streams (in a
    file or as LLM_GATEWAY_MAX_STREAMS) still sets it with a warning, and both at once fail."""
    assert load_config(write(tmp_path, "server: {max_in_flight: 7}\n"), {}).server.request_cap == 7
    assert load_config(None, {}).server.max_in_flight > 0  # from the fd limit
    with caplog.at_level("WARNING", logger="gateway.config"):
        old = load_config(write(tmp_path, "server: {max_streams: 5}\n"), {})
    assert old.server.max_in_flight == 5
    assert "server.max_streams is deprecated" in caplog.text and "max_in_flight" in caplog.text
    assert load_config(None, {"LLM_GATEWAY_MAX_STREAMS": "6"}).server.max_in_flight == 6
    with pytest.raises(ConfigError, match=r"^environment LLM_GATEWAY_MAX_STREAMS: server\.max_st"):
        load_config(None, {"LLM_GATEWAY_MAX_STREAMS": "-1"})
    both = write(tmp_path, "server: {max_streams: 5, max_in_flight: 6}\n")
    with pytest.raises(ConfigError, match=r"gateway\.yaml: server\.max_streams: renamed"):
        load_config(both, {})
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "server: {max_in_fligth: 6}\n"), {})
    listed = str(caught.value).split("expected one of:")[1]
    assert "max_in_flight" in listed and "max_streams" not in listed
