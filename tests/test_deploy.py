"""deploy/: the plain manifests (the Helm chart rendered with default values) say what the broker needs.

Structural checks run everywhere (PyYAML only). When Helm is available - the `helm` CLI on PATH, or the
`helm_python` package (PyPI `helm-python-sdk`) - the chart is also linted and rendered, and the rendering must
equal deploy/manifests/ (regenerate with `python deploy/render.py`).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.cli import build_parser
from broker.settings import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "broker"
MANIFESTS = DEPLOY / "manifests"
HELM = shutil.which("helm")
HAS_SDK = importlib.util.find_spec("helm_python") is not None
NO_HELM = "no helm CLI on PATH and no helm_python package (pip install helm-python-sdk)"


class _Recorder(Mapping[str, str]):
    """An empty environment that remembers every name load_settings() asks for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return default

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked.add(key)
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def setting_names() -> set[str]:
    env = _Recorder()
    load_settings(env)
    return env.asked


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(MANIFESTS.glob("*.y*ml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


# Every workload that runs the broker: a kind, and for the CronJobs which one (their component label).
WORKLOADS = ["Deployment", "Job", "CronJob/metadata-refresh", "CronJob/audit-prune"]


def _named(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    kind, _, component = kind.partition("/")
    return [d for d in docs if d["kind"] == kind and (
        not component or d["metadata"]["labels"].get("app.kubernetes.io/component") == component)]


def only(kind: str) -> dict[str, Any]:
    """The one object of `kind` ("CronJob/audit-prune": the CronJob of that component)."""
    found = _named(documents(), kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        obj = obj["spec"]["jobTemplate"]
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def test_every_manifest_parses_and_names_its_kind() -> None:
    docs = documents()
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Job",
            "ServiceAccount"} <= kinds
    for d in docs:
        assert d.get("apiVersion") and d.get("metadata", {}).get("name"), d
        assert "namespace" not in d["metadata"], "plain manifests stay namespace-free (kubectl apply -n)"


def test_the_startup_probe_outlasts_the_wait_for_the_database() -> None:
    from broker.store.database import START_WAIT

    (c,) = pod_spec(only("Deployment"))["containers"]
    probe = c["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] > START_WAIT + 15


def test_probes_point_at_health_endpoints() -> None:
    (container,) = pod_spec(only("Deployment"))["containers"]
    port_names = {p["name"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in port_names
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("kind", WORKLOADS)
def test_pods_run_non_root_on_a_read_only_root_filesystem(kind: str) -> None:
    spec = pod_spec(only(kind))
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["automountServiceAccountToken"] is False
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        assert mounts <= {"/tmp"}, "the app writes nothing but gunicorn's heartbeat files"


def test_service_account_does_not_mount_a_token() -> None:
    sa = only("ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert pod_spec(only("Deployment"))["serviceAccountName"] == sa["metadata"]["name"]


def test_migration_job_runs_db_upgrade_before_install_and_upgrade() -> None:
    job = only("Job")
    (c,) = pod_spec(job)["containers"]
    argv = [*c.get("command", []), *c.get("args", [])]
    assert argv == ["broker", "db", "upgrade"]
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.db_command) == ("db", "upgrade")
    hooks = set(job["metadata"]["annotations"]["helm.sh/hook"].split(","))
    assert hooks == {"pre-install", "pre-upgrade"}
    assert pod_spec(job)["restartPolicy"] == "Never"


def test_metadata_refresh_cronjob_runs_the_refresh_command() -> None:
    cron = only("CronJob/metadata-refresh")
    (c,) = pod_spec(cron)["containers"]
    argv = [*c.get("command", []), *c.get("args", [])]
    assert argv == ["broker", "metadata", "refresh"]
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.metadata_command) == ("metadata", "refresh")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


def test_audit_prune_cronjob_keeps_a_year_by_default() -> None:
    cron = only("CronJob/audit-prune")
    (c,) = pod_spec(cron)["containers"]
    argv = [*c.get("command", []), *c.get("args", [])]
    assert argv == ["broker", "audit", "prune", "--older-than", "365"]
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.audit_command, args.older_than) == ("audit", "prune", 365)
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(only("CronJob/metadata-refresh")["spec"]["schedule"].split()) == 5
    assert len(cron["spec"]["schedule"].split()) == 5


@pytest.mark.parametrize("kind", WORKLOADS)
def test_env_names_are_real_settings(kind: str) -> None:
    known = setting_names()
    assert {"BROKER_PUBLIC_URL", "DATABASE_URL", "REDIS_URL", "BROKER_SECRET_KEY", "BROKER_ENV"} <= known
    (c,) = pod_spec(only(kind))["containers"]
    env = {e["name"]: e for e in c["env"]}
    unknown = sorted(set(env) - known)
    assert not unknown, f"{kind} sets environment variables the broker does not read: {unknown}"
    assert env["BROKER_ENV"]["value"] == "production"
    assert env["BROKER_PUBLIC_URL"]["value"].startswith("https://")
    for secret in ("BROKER_SECRET_KEY", "DATABASE_URL", "REDIS_URL"):
        assert "secretKeyRef" in env[secret]["valueFrom"], f"{secret} must come from a Secret"
        assert "value" not in env[secret]


def test_server_args_are_broker_serve_flags() -> None:
    deployment = only("Deployment")
    (c,) = pod_spec(deployment)["containers"]
    assert c["command"] == ["broker"]
    args = build_parser().parse_args(c["args"])  # argparse exits on an unknown flag
    assert args.command == "serve"
    assert args.port == c["ports"][0]["containerPort"]
    assert args.workers is not None and args.workers >= 1
    assert args.keepalive > 60, "idle connections must outlive a load balancer's (ingress-nginx, ALB: 60 s)"
    service = only("Service")
    assert service["spec"]["ports"][0]["targetPort"] in {c["ports"][0]["name"], args.port}
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    job_labels = only("Job")["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= job_labels.items(), "the Service must not pick the Job"


def test_autoscaler_and_disruption_budget_target_the_deployment() -> None:
    deployment = only("Deployment")
    hpa = only("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": deployment["metadata"]["name"]}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    pdb = only("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_prometheus_annotation_names_the_container_port() -> None:
    template = only("Deployment")["spec"]["template"]
    (c,) = template["spec"]["containers"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(c["ports"][0]["containerPort"])


def test_proxy_hops_default_trusts_no_proxy() -> None:
    """The chart creates no Ingress: trusting a proxy that is not there would let clients forge their address."""
    assert "Ingress" not in {d["kind"] for d in documents()}
    (c,) = pod_spec(only("Deployment"))["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["BROKER_PROXY_HOPS"] == "0"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["proxyHops"] == 0


def test_proxy_hops_is_documented() -> None:
    values_text = (CHART / "values.yaml").read_text()
    assert "BROKER_PROXY_HOPS" in values_text and "proxyHops:" in values_text
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert "proxyHops" in notes and "BROKER_PROXY_HOPS" in notes
    readme = (DEPLOY / "README.md").read_text()
    assert "proxyHops" in readme and "BROKER_PROXY_HOPS" in readme


def test_readme_names_every_manifest_that_carries_the_public_url() -> None:
    readme = " ".join((DEPLOY / "README.md").read_text().split())
    without_helm = readme[readme.index("Without Helm:"):]
    without_helm = without_helm[:without_helm.index("```")]
    carriers = sorted(p.name for p in MANIFESTS.glob("*.yaml") if "BROKER_PUBLIC_URL" in p.read_text())
    assert len(carriers) >= 3
    for name in carriers:
        assert f"manifests/{name}" in without_helm, f"deploy/README.md does not say to edit {name}"


# --- with Helm --------------------------------------------------------------------------------------------


def _render_module() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_render", DEPLOY / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["deploy_render"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(HELM is None and not HAS_SDK, reason=NO_HELM)
def test_helm_lint_passes() -> None:
    if HELM is not None:
        subprocess.run([HELM, "lint", "--strict", str(CHART)], check=True, capture_output=True, text=True)
        return
    import helm_python  # type: ignore[import-not-found]

    report = helm_python.lint(str(CHART), strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


@pytest.mark.skipif(HELM is None and not HAS_SDK, reason=NO_HELM)
def test_helm_template_equals_plain_manifests() -> None:
    render = _render_module()
    manifests, how = render.render()
    wanted = render.target_files(manifests)
    on_disk = {p: p.read_text() for p in MANIFESTS.glob("*.yaml")}
    assert set(wanted) == set(on_disk), f"{how}: run python deploy/render.py"
    for path, text in wanted.items():
        assert list(yaml.safe_load_all(text)) == list(yaml.safe_load_all(on_disk[path])), (
            f"{path.name} differs from the chart ({how}): run python deploy/render.py"
        )


needs_helm = pytest.mark.skipif(HELM is None and not HAS_SDK, reason=NO_HELM)


def render_with(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart rendered with `values` over its defaults, as documents."""
    manifests, _ = _render_module().render(values)
    return [d for text in manifests.values() for d in yaml.safe_load_all(text) if d]


def render_error(values: dict[str, Any]) -> str:
    """The message of the chart's refusal to render `values` (fails the test if it renders)."""
    try:
        _render_module().render(values)
    except subprocess.CalledProcessError as exc:  # helm CLI
        return str(exc.stderr)
    except Exception as exc:  # helm_python.HelmError  # noqa: BLE001
        return str(exc)
    pytest.fail(f"the chart rendered {values}")


def kind_of(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = _named(docs, kind)
    return found


def settings_of(obj: dict[str, Any]) -> Settings:
    """load_settings() over a pod's environment, the Secret's keys filled with plausible values."""
    (c,) = pod_spec(obj)["containers"]
    secrets = {"BROKER_SECRET_KEY": "k" * 48, "DATABASE_URL": "postgresql://broker:pw@db:5432/broker",
               "REDIS_URL": "redis://redis:6379/0"}
    env = {e["name"]: e["value"] if "value" in e else secrets.get(e["name"], "") for e in c["env"]}
    return load_settings(env)


@needs_helm
@pytest.mark.parametrize("port", [8000, 9000])
def test_prometheus_port_follows_server_port(port: int) -> None:
    template = kind_of(render_with({"server": {"port": port}}), "Deployment")["spec"]["template"]
    (c,) = template["spec"]["containers"]
    assert c["ports"][0]["containerPort"] == port
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port)


@needs_helm
def test_prometheus_port_given_explicitly_wins() -> None:
    docs = render_with({"server": {"port": 9000}, "podAnnotations": {"prometheus.io/port": "9100"}})
    annotations = kind_of(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/path": "/metrics",
                           "prometheus.io/port": "9100"}


@needs_helm
def test_prometheus_port_only_with_the_scrape_annotation() -> None:
    docs = render_with({"podAnnotations": {"prometheus.io/scrape": None, "prometheus.io/path": None}})
    assert not kind_of(docs, "Deployment")["spec"]["template"]["metadata"].get("annotations")


# Every spelling the chart is asked about, sorted by what the broker makes of it in production.
DEV_IDP_OFF: list[Any] = ["false", "False", "FALSE", "0", "no", "No", "off", "OFF", "", False, 0]
DEV_IDP_REFUSED: list[Any] = ["true", "True", "1", "yes", "on", True, 1, " false", "false ", "nope", "f", "n"]


@needs_helm
@pytest.mark.parametrize("value", DEV_IDP_OFF, ids=repr)
def test_dev_idp_false_is_accepted(value: Any) -> None:
    docs = render_with({"settings": {"BROKER_DEV_IDP": value}})
    for kind in WORKLOADS:
        settings = settings_of(kind_of(docs, kind))  # the broker starts with it ...
        assert settings.is_production and settings.dev_idp is False  # ... without the development IdP


@needs_helm
@pytest.mark.parametrize("value", DEV_IDP_REFUSED, ids=repr)
def test_dev_idp_anything_but_false_is_refused(value: Any) -> None:
    assert "BROKER_DEV_IDP" in render_error({"settings": {"BROKER_DEV_IDP": value}})
    # ... as the broker itself would refuse it (it enables the IdP or is no boolean at all)
    env = {"BROKER_ENV": "production", "BROKER_PUBLIC_URL": "https://sso.example.com",
           "BROKER_SECRET_KEY": "k" * 48, "BROKER_DEV_IDP": str(value)}
    with pytest.raises(ConfigError):
        load_settings(env)


@needs_helm
@pytest.mark.parametrize("hops", [0, 1, 2, "1"], ids=repr)
def test_proxy_hops_value_sets_broker_proxy_hops(hops: int | str) -> None:
    docs = render_with({"proxyHops": hops})
    deployment = kind_of(docs, "Deployment")
    (c,) = pod_spec(deployment)["containers"]
    assert [e["value"] for e in c["env"] if e["name"] == "BROKER_PROXY_HOPS"] == [str(hops)]
    assert settings_of(deployment).proxy_hops == int(hops)


@needs_helm
@pytest.mark.parametrize("hops", [-1, 1.5, "one", True], ids=repr)
def test_proxy_hops_must_be_a_whole_number(hops: Any) -> None:
    assert "proxyHops" in render_error({"proxyHops": hops})


@needs_helm
def test_proxy_hops_is_not_also_a_setting() -> None:
    """One source for BROKER_PROXY_HOPS: a second env entry of the same name would silently win or lose."""
    assert "proxyHops" in render_error({"settings": {"BROKER_PROXY_HOPS": "1"}})


@needs_helm
def test_audit_retention_and_its_cronjob_follow_the_values() -> None:
    docs = render_with({"auditPrune": {"retentionDays": 30}})
    (c,) = pod_spec(_named(docs, "CronJob/audit-prune")[0])["containers"]
    assert c["args"] == ["audit", "prune", "--older-than", "30"]
    assert not _named(render_with({"auditPrune": {"enabled": False}}), "CronJob/audit-prune")
