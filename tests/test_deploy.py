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
from broker.settings import load_settings

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


def only(kind: str) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind]
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


def test_probes_point_at_health_endpoints() -> None:
    (container,) = pod_spec(only("Deployment"))["containers"]
    port_names = {p["name"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in port_names
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("kind", ["Deployment", "Job", "CronJob"])
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
    cron = only("CronJob")
    (c,) = pod_spec(cron)["containers"]
    argv = [*c.get("command", []), *c.get("args", [])]
    assert argv == ["broker", "metadata", "refresh"]
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.metadata_command) == ("metadata", "refresh")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


@pytest.mark.parametrize("kind", ["Deployment", "Job", "CronJob"])
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
