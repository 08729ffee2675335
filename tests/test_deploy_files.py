"""The deployment files are valid, name only files that exist, and keep their promises.

* prometheus.yml passes `promtool check config` (Debian's prometheus package), and every
  Grafana panel's PromQL parses (`promtool check rules` on the queries as recording rules).
* docker-compose.yml validates against the Compose Specification's JSON schema, the copy
  vendored by the pinned check-jsonschema package, with jsonschema.
* The Dockerfile is checked with stated rules (the ones hadolint would apply here, which is
  not installable from Debian or PyPI) over the BuildKit parser's reading of it (`dockerfile`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import support
from tests.integration.test_prometheus import dashboard_queries, grafana_expr

ROOT = support.ROOT
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROVISIONING = ROOT / "grafana" / "provisioning"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        support.unavailable("promtool is not installed (Debian: prometheus)")
    assert path is not None
    return path


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


# ------------------------------------------------------------------------------ Prometheus


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    # promtool insists that credentials files exist: point the compose secret at a real file.
    token = tmp_path / "metrics_token"
    token.write_text("token")
    text = (ROOT / "prometheus.yml").read_text()
    assert "/run/secrets/metrics_token" in text
    (tmp_path / "prometheus.yml").write_text(text.replace("/run/secrets/metrics_token", str(token)))
    for rules in yaml.safe_load(text)["rule_files"]:  # promtool checks them too
        shutil.copy(ROOT / rules, tmp_path / rules)
    result = subprocess.run(
        [promtool(), "check", "config", "prometheus.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_prometheus_scrapes_the_api_and_the_worker() -> None:
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for group in job["static_configs"] for t in group["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets["alpha-trader-api"] == ["flask:5000"]
    assert targets["alpha-trader-worker"] == ["celery_worker:9808"]
    services = compose()["services"]
    assert "9808" in services["celery_worker"]["expose"]
    assert services["celery_worker"]["environment"]["METRICS_PORT"] == "9808"
    assert targets["alpha-trader-trader"] == ["celery_trader:9809"]
    assert services["celery_trader"]["environment"]["METRICS_PORT"] == "9809"


STALE_ANNOTATIONS = {
    "summary": "No trading cycle for 30 minutes while the market may be open",
    "description": "No trading cycle has ended for 30 minutes, or none since the trader started."
    " Is the trader worker (celery_trader) or beat running? GET /health shows the age of the"
    " last cycle.",
}


def test_alert_rules_fire_when_trading_stops(tmp_path: Path) -> None:
    """`promtool test rules` on the shipped rules: a trader whose cycles stop (its last-run
    timestamp frozen, or its scrape target down) alerts inside the trading window, and a
    trader that keeps cycling does not. Promtool's clock starts on Thursday 1970-01-01 00:00
    UTC; one sample a minute, the timestamp advancing until 11:40."""
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    assert config["rule_files"] == ["prometheus-alerts.yml"]
    shutil.copy(ROOT / "prometheus-alerts.yml", tmp_path / "prometheus-alerts.yml")
    stale, down = "AlphaTradingCycleStale", "AlphaTraderDown"
    frozen = "alpha_cycle_last_run_timestamp_seconds"
    tests = [
        {  # cycles stop at 11:40: nothing at 11:55, the alert at 12:20 with the age
            "interval": "1m",
            "input_series": [
                {
                    "series": f'{frozen}{{job="alpha-trader-trader"}}',
                    "values": "0+60x700 42000x100",
                },
                {"series": 'up{job="alpha-trader-trader"}', "values": "1x800"},
            ],
            "alert_rule_test": [
                {"eval_time": "715m", "alertname": stale, "exp_alerts": []},
                {
                    "eval_time": "760m",
                    "alertname": stale,
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "critical"},
                            "exp_annotations": STALE_ANNOTATIONS,
                        }
                    ],
                },
                {"eval_time": "760m", "alertname": down, "exp_alerts": []},
            ],
        },
        {  # the trader is killed at 11:40: its target goes down, its series disappears
            "interval": "1m",
            "input_series": [
                {"series": f'{frozen}{{job="alpha-trader-trader"}}', "values": "0+60x700"},
                {
                    "series": 'up{job="alpha-trader-trader", instance="t:9809"}',
                    "values": "1x700 0x100",
                },
            ],
            "alert_rule_test": [
                {
                    "eval_time": "745m",
                    "alertname": down,
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "critical",
                                "job": "alpha-trader-trader",
                                "instance": "t:9809",
                            },
                            "exp_annotations": {
                                "summary": "The trading worker does not answer Prometheus' scrapes",
                                "description": "t:9809 has been down for 2 minutes: no trading"
                                " cycle can run.",
                            },
                        }
                    ],
                },
                {
                    "eval_time": "760m",
                    "alertname": stale,
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "critical"},
                            "exp_annotations": STALE_ANNOTATIONS,
                        }
                    ],
                },
            ],
        },
        {  # a healthy trader cycling every 10 minutes all day: no alert
            "interval": "10m",
            "input_series": [
                {"series": f'{frozen}{{job="alpha-trader-trader"}}', "values": "0+600x140"},
                {"series": 'up{job="alpha-trader-trader"}', "values": "1x140"},
            ],
            "alert_rule_test": [
                {"eval_time": f"{hours}h", "alertname": name, "exp_alerts": []}
                for hours in (12, 18, 23)
                for name in (stale, down)
            ],
        },
    ]
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": ["prometheus-alerts.yml"], "tests": tests}))
    result = subprocess.run(
        [promtool(), "test", "rules", spec.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_metrics_need_the_token_prometheus_sends() -> None:
    """The app's /metrics require METRICS_TOKEN; compose hands the same value to the app and,
    as a secret file, to Prometheus, whose every app job sends it as a bearer token."""
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    app_jobs = [j for j in config["scrape_configs"] if j["job_name"].startswith("alpha-trader")]
    assert len(app_jobs) == 3
    for job in app_jobs:
        assert job["authorization"] == {
            "type": "Bearer",
            "credentials_file": "/run/secrets/metrics_token",
        }, job["job_name"]
    spec = compose()
    assert spec["secrets"]["metrics_token"] == {"environment": "METRICS_TOKEN"}
    assert "metrics_token" in spec["services"]["prometheus"]["secrets"]
    for name in ("flask", "celery_worker", "celery_trader"):
        token = spec["services"][name]["environment"]["METRICS_TOKEN"]
        assert token.startswith("${METRICS_TOKEN:?"), name  # required, never a default
    readme = (ROOT / "README.md").read_text()
    assert "METRICS_TOKEN" in readme


def test_trading_cycles_have_their_own_worker() -> None:
    """Procfile (make run) and compose: one process serves only the trading queue with one
    slot; the training/backtest worker does not serve it, so nothing queued there delays a
    cycle. Beat runs once, as its own process: embedded in the trader, it outlived a killed
    trader (re-parented to PID 1, sending cycles nobody consumed, holding honcho's pipe)."""
    procs = dict(
        line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line
    )
    trader, worker = procs["trader"].split(), procs["worker"].split()
    assert trader[trader.index("--queues") + 1] == "trading"
    assert trader[trader.index("--concurrency") + 1] == "1"
    assert "--beat" not in trader
    assert "--beat" not in worker
    assert procs["beat"].split()[3:4] == ["beat"]
    assert "trading" not in worker[worker.index("--queues") + 1].split(",")
    services = compose()["services"]
    command = services["celery_trader"]["command"]
    assert command[command.index("--queues") + 1] == "trading"
    assert command[command.index("--concurrency") + 1] == "1"
    command = services["celery_worker"]["command"]
    assert "trading" not in command[command.index("--queues") + 1].split(",")


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = dashboard_queries()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": grafana_expr(expr)}
                    for i, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------ Grafana


def test_dashboard_is_provisioned_against_the_provisioned_datasource() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    uids = {d["uid"] for d in datasources["datasources"]}
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/etc/grafana/provisioning/dashboards"
    board = json.loads((PROVISIONING / "dashboards" / "alpha-trader.json").read_text())
    panels = [p for p in board["panels"] if p["type"] != "row"]
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles))
    for panel in panels:
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["datasource"]["uid"] in uids and t["expr"] for t in panel["targets"])
    wanted = [
        "Portfolio value",
        "Daily and realized P&L",
        "Trade volume",
        "confidence",
        "Signals",
        "Risk state",
        "Orders",
        "Broker",
        "Celery",
        "API latency",
        "CPU",
        "memory",
    ]
    for word in wanted:
        assert any(word in title for title in titles), word


# ------------------------------------------------------------------------------ Compose


def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return dict(json.loads((vendor / "compose-spec.json").read_text()))


def test_compose_file_matches_the_compose_specification() -> None:
    import jsonschema

    schema = compose_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, "\n".join(errors)
    # The schema is really in force: a misspelt key is an error.
    broken = compose()
    broken["services"]["flask"]["healtcheck"] = broken["services"]["flask"].pop("healthcheck")
    assert list(validator.iter_errors(broken))


def _mounted_paths(service: dict[str, Any]) -> list[str]:
    paths = []
    for volume in service.get("volumes", []):
        source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith((".", "/")):
            paths.append(source)
    return paths


def test_compose_names_only_files_that_exist() -> None:
    for name, service in compose()["services"].items():
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
            assert (ROOT / context).is_dir(), name
            assert (ROOT / context / (dockerfile or "Dockerfile")).is_file(), name
        for path in _mounted_paths(service):
            assert (ROOT / path).exists(), f"{name} mounts missing {path}"
        env_files = service.get("env_file", [])
        for entry in [env_files] if isinstance(env_files, str) else env_files:
            if isinstance(entry, str) or entry.get("required", True) is True:
                path = entry if isinstance(entry, str) else entry["path"]
                assert (ROOT / path).is_file(), f"{name} requires missing env_file {path}"


def test_compose_runs_the_whole_service_safely() -> None:
    config = compose()
    services = config["services"]
    assert {
        "flask",
        "celery_worker",
        "celery_beat",
        "redis",
        "postgres",
        "prometheus",
        "grafana",
        "flower",
    } <= set(services)
    # Exactly one scheduler: one beat service, one replica, and no worker embedding another.
    beats = [n for n, s in services.items() if "beat" in s.get("command", [])]
    assert beats == ["celery_beat"]
    assert services["celery_beat"]["deploy"]["replicas"] == 1
    assert not any(
        "--beat" in s.get("command", []) or "-B" in s.get("command", []) for s in services.values()
    )
    assert "--appendonly" in services["redis"]["command"]
    assert (
        services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1]
        == "yes"
    )
    for name in (
        "flask",
        "celery_worker",
        "celery_beat",
        "redis",
        "postgres",
        "prometheus",
        "grafana",
        "flower",
    ):
        assert "healthcheck" in services[name], name
    for name in ("flask", "celery_worker", "celery_trader", "celery_beat"):
        conditions = {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}
        assert conditions == {
            "migrate": "service_completed_successfully",
            "redis": "service_healthy",
            "postgres": "service_healthy",
        }, name
    volumes = set(config["volumes"])
    assert {"postgres_data", "models", "best_params"} <= volumes
    assert "postgres_data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    for name in ("flask", "celery_worker"):
        assert {"models:/app/models", "best_params:/app/best_params"} <= set(
            services[name]["volumes"]
        )
        assert "/tmp/prometheus" in services[name]["tmpfs"]  # emptied at every start
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_USER"].startswith("${")
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


# ------------------------------------------------------------------------------ Dockerfile


def dockerfile_commands() -> list[Any]:
    import dockerfile

    return list(dockerfile.parse_file(str(DOCKERFILE)))


def test_dockerfile_follows_the_stated_rules() -> None:
    """The hadolint rules that matter here, named by their hadolint codes."""
    commands = dockerfile_commands()
    names = [c.cmd for c in commands]
    froms = [c for c in commands if c.cmd == "FROM"]
    for command in froms:  # DL3006/DL3007: a tagged, non-latest, slim base
        image = command.value[0]
        assert ":" in image, image
        tag = image.split(":", 1)[1]
        assert tag != "latest", image
        assert re.match(r"\d+\.\d+", tag), image
        assert "slim" in tag, image
    users = [c.value[0] for c in commands if c.cmd == "USER"]  # DL3002: not root at the end
    assert users
    assert users[-1] not in {"root", "0"}
    assert names.index("USER") > max(i for i, n in enumerate(names) if n == "RUN")
    for command in commands:
        if command.cmd == "ADD":  # DL3020: COPY for local files
            pytest.fail(f"ADD at line {command.start_line}: use COPY")
        if command.cmd != "RUN":
            continue
        script = " ".join(command.value)
        if "apt-get install" in script:
            assert "--no-install-recommends" in script  # DL3015
            assert re.search(r"install[^&]*\s-y\b", script)  # DL3014
            assert "rm -rf /var/lib/apt/lists/*" in script  # DL3009: same layer
            packages = re.findall(r"install\s+(?:-\S+\s+)*(.+?)(?:&&|$)", script)[0].split()
            assert all("=" in p for p in packages if not p.startswith("-")), packages  # DL3008
        if re.search(r"\bpip3? install\b", script):
            assert "--no-cache-dir" in script  # DL3042
    workdirs = [c.value[0] for c in commands if c.cmd == "WORKDIR"]
    assert all(w.startswith("/") for w in workdirs)  # DL3000
    cmd = [c for c in commands if c.cmd == "CMD"]
    assert cmd
    assert cmd[-1].json  # DL3025: exec form, signals reach gunicorn
    # Dependencies before sources: the pip layer survives a code change.
    copies = [(i, c.value) for i, c in enumerate(commands) if c.cmd == "COPY"]
    pip = next(i for i, c in enumerate(commands) if c.cmd == "RUN" and "pip install" in c.value[0])
    requirements_copy = next(i for i, v in copies if v[0] == "requirements.txt")
    source_copy = next(i for i, v in copies if v[0] == ".")
    assert requirements_copy < pip < source_copy


def test_dockerignore_keeps_secrets_and_runtime_output_out_of_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".env", ".git", ".venv", "database/*", "models/*"):
        assert entry in ignored, entry
