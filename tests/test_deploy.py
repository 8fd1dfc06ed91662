"""deploy/ stays true to the code: every name, path, port, probe and metric it uses exists."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import yaml

from gateway.cli import main as cli
from gateway.config import ServerSettings, environment_setting, load_config
from gateway.web import make_app
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
# Variables the code reads that are not settings.
OTHER_VARIABLES = {
    "LLM_GATEWAY_CONFIG",
    "PROMETHEUS_MULTIPROC_DIR",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
}


def manifests() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object by kind."""
    objects: dict[str, dict[str, Any]] = {}
    for path in KUBERNETES.glob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            objects[document["kind"]] = document
    return objects


def assert_cli_parses(args: list[str]) -> None:
    """``llm-gateway ARGS`` is a valid invocation (parsed by Click, not run)."""
    group: click.Group = cli
    name, rest = args[0], list(args[1:])
    command = group.commands.get(name)
    while isinstance(command, click.Group):
        name, rest = rest[0], rest[1:]
        command = command.commands.get(name)
    assert command is not None, f"no command {args}"
    command.make_context(name, rest, parent=click.Context(cli, info_name="llm-gateway"))


def assert_known_variable(name: str, config_references: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    assert (
        environment_setting(name) is not None
        or name in OTHER_VARIABLES
        or name in config_references
    ), f"{name} is not a setting or a variable the code reads"


def test_alert_rules_pass_promtool() -> None:
    """promtool accepts the alert rules."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: run bin/ensure-test-tools (make test does)"
    result = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "prometheus/alerts.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_manifests_match_the_code() -> None:
    """Probes are real routes, ports and grace periods agree, env vars and secrets exist."""
    objects = manifests()
    assert set(objects) >= {
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "Ingress",
    }
    listed = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(
        p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    config_text = objects["ConfigMap"]["data"]["gateway.yaml"]
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    references = set(re.findall(r"env:([A-Z_][A-Z0-9_]*)", config_text))
    for name in env:
        assert_known_variable(name, references)
    secret_keys = set(objects["Secret"]["stringData"])
    for item in env.values():
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert (
                ref["name"] == objects["Secret"]["metadata"]["name"] and ref["key"] in secret_keys
            )
    config_path = Path(env["LLM_GATEWAY_CONFIG"]["value"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert config_path.parent == Path(mount["mountPath"])
    dummy = {name: "x" * 40 for name in references}
    config = load_config(_write(config_text), dummy)
    assert container["ports"][0]["containerPort"] == config.server.port
    routes = {r.resource.canonical for r in make_app(config).router.routes() if r.resource}
    assert container["livenessProbe"]["httpGet"]["path"] == "/health" in routes
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready" in routes
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > config.server.drain_grace + pre_stop
    assert container["args"] == ["serve"]
    assert_cli_parses(container["args"])
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]


def test_compose_file_matches_the_code() -> None:
    """Every service's files, commands, env vars and scrape targets exist."""
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "mock", "gateway-1", "gateway-2", "nginx", "prometheus", "grafana"} <= set(
        services
    )
    for name in ("gateway-1", "gateway-2", "mock"):
        build = services[name]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    gateway = services["gateway-1"]
    for name in gateway["environment"]:
        assert_known_variable(name)
    assert_cli_parses(services["mock"]["command"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source
    config = load_config(DEPLOY / "gateway.yaml", {})
    scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"gateway-1:{config.server.port}", f"gateway-2:{config.server.port}"]
    assert "mock:9090" in config.deployments["mock"].base_url


def test_dockerfile_copies_what_exists_and_runs_the_cli() -> None:
    """COPY sources exist; the entry point is `llm-gateway serve`; ENV names are settings."""
    text = (DEPLOY / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), source
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, flags=re.M).group(1))  # type: ignore[union-attr]
    command = json.loads(re.search(r"^CMD (.+)$", text, flags=re.M).group(1))  # type: ignore[union-attr]
    assert entrypoint == ["llm-gateway"]
    assert_cli_parses(command)
    for name in re.findall(r"\b(LLM_GATEWAY_[A-Z_]+|PYTHON[A-Z]+)=", text):
        assert_known_variable(name)
    assert "/health" in text and "USER 10001" in text
    scripts = (ROOT / "pyproject.toml").read_text()
    assert 'llm-gateway = "gateway.cli:main"' in scripts


def test_systemd_unit_runs_a_valid_command() -> None:
    """ExecStart is a valid `llm-gateway serve` invocation and its variables are settings."""
    text = (DEPLOY / "systemd/llm-gateway.service").read_text()
    exec_start = shlex.split(re.search(r"^ExecStart=(.+)$", text, flags=re.M).group(1))  # type: ignore[union-attr]
    assert exec_start[0].endswith("/llm-gateway")
    assert_cli_parses(exec_start[1:])
    for name in re.findall(r"^Environment=([A-Z_]+)=", text, flags=re.M):
        assert_known_variable(name)
    timeout = int(re.search(r"^TimeoutStopSec=(\d+)", text, flags=re.M).group(1))  # type: ignore[union-attr]
    assert timeout > ServerSettings().drain_grace


def test_nginx_limits_match_the_gateway() -> None:
    """nginx's body limit and keep-alive settings agree with the gateway's defaults."""
    conf = (DEPLOY / "nginx/gateway.conf").read_text()
    wrapper = (DEPLOY / "nginx/nginx.conf").read_text()
    settings = ServerSettings()
    limit_mib = int(re.search(r"client_max_body_size (\d+)m;", conf).group(1))  # type: ignore[union-attr]
    assert limit_mib * 1024 * 1024 == settings.max_body_bytes
    for needed in ("proxy_buffering off", "gzip off", "proxy_http_version 1.1"):
        assert needed in conf
    read_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", conf).group(1))  # type: ignore[union-attr]
    assert read_timeout > settings.keepalive_interval
    idle = int(re.search(r"keepalive_timeout (\d+)s;", wrapper).group(1))  # type: ignore[union-attr]
    assert idle < settings.header_timeout


def _write(text: str) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "gateway.yaml"
    path.write_text(text)
    return path


def _unit_kind(expr: str) -> str:
    if "histogram_quantile" in expr:
        return "quantile"
    if " / " in expr:
        return "ratio"
    if "rate(" in expr or "increase(" in expr:
        return "rate"
    return "gauge"


def test_dashboard_has_variables_and_one_unit_per_panel() -> None:
    """A datasource variable (no hard-coded uid), instance and model variables, and no panel that
    mixes ratios, rates and latencies, each with the unit that fits them."""
    dashboard = json.loads((DEPLOY / "grafana/llm-gateway.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"instance", "model"} <= set(variables)
    assert set(re.findall(r'"uid": "([^"]+)"', json.dumps(dashboard))) == {
        "${datasource}", dashboard["uid"]}  # fmt: skip
    fitting = {"quantile": {"s"}, "ratio": {"percentunit"},
               "rate": {"reqps", "ops", "short", "suffix: tokens/min"}}  # fmt: skip
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)) >= 20
    for panel in panels:
        unit = panel["fieldConfig"]["defaults"]["unit"]
        kinds = {_unit_kind(t["expr"]) for t in panel["targets"]}
        assert len(kinds) == 1, f"{panel['title']} mixes {kinds}"
        kind = kinds.pop()
        assert kind == "gauge" or unit in fitting[kind], f"{panel['title']}: {kind} in {unit}"
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], panel["title"]
    for needed in (
        "Time to first event",
        "Inter-event gaps",
        "Stream terminations by cause",
        "Cache hit ratio",
        "Rate-limited requests by scope",
        "Circuit breaker state",
    ):
        assert needed in titles  # fmt: skip


def test_kustomize_renders_the_base_with_service_monitor_and_sse_ingress() -> None:
    """`kubectl kustomize` renders the base; the ServiceMonitor and the Ingress point at the
    Service's port and /metrics, and the Ingress does not buffer events."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl missing: run bin/ensure-test-tools (make test does)"
    rendered = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES)], capture_output=True, text=True, check=True
    ).stdout
    objects = {d["kind"]: d for d in yaml.safe_load_all(rendered)}
    service = objects["Service"]
    port_name = service["spec"]["ports"][0]["name"]
    monitor = objects["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"] == service["spec"]["selector"]
    assert monitor["endpoints"][0]["port"] == port_name
    config = load_config(None, {})
    routes = {r.resource.canonical for r in make_app(config).router.routes() if r.resource}
    assert monitor["endpoints"][0]["path"] == "/metrics" in routes
    ingress = objects["Ingress"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": port_name}}
    notes = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert notes[prefix + "proxy-buffering"] == "off"
    assert notes[prefix + "proxy-request-buffering"] == "off"
    settings = ServerSettings()
    assert int(notes[prefix + "proxy-read-timeout"]) > settings.keepalive_interval
    size_mib = int(notes[prefix + "proxy-body-size"].rstrip("m"))
    assert size_mib * 1024 * 1024 == settings.max_body_bytes


def _docker_context() -> list[Path]:
    """The files `docker build .` sends with this .dockerignore (its simple patterns only)."""
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"
    allowed = [r[1:].rstrip("/") for r in rules if r.startswith("!")]
    excluded = [r.removeprefix("**/") for r in rules[1:] if not r.startswith("!")]
    sent = []
    for path in ROOT.rglob("*"):
        relative = path.relative_to(ROOT)
        if not path.is_file() or not any(relative.parts[0] == a for a in allowed):
            continue
        if any(relative.match(pattern) or pattern in relative.parts for pattern in excluded):
            continue
        sent.append(relative)
    return sent


def test_docker_context_holds_what_the_image_copies_and_little_else() -> None:
    """Every COPY source is in the build context; .venv, .git, var and caches are not."""
    sent = _docker_context()
    text = (DEPLOY / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M):
        for source in line.split()[:-1]:
            assert any(p == Path(source) or Path(source) in p.parents for p in sent), source
    assert not [p for p in sent if p.parts[0] in {".venv", ".git", "var", "tests"}]
    assert not [p for p in sent if "__pycache__" in p.parts]
    size = sum((ROOT / p).stat().st_size for p in sent)
    assert size < 2 * 1024 * 1024, f"build context is {size} bytes"
    assert "HEALTHCHECK" in text and re.search(r"^USER 10001$", text, flags=re.M)
