"""Checks of the packaging under deploy/ (run: python3 -m pytest tests/deploy,
or python3 -m unittest discover -s tests/deploy).

* systemd: `systemd-analyze verify` on deploy/systemd/mtgate.service (the binary
  path swapped for a real one: $MTGATE_BIN, else target/*/mtgate, else `true`),
  plus the hardening directives the unit must keep. Skipped when
  systemd-analyze is missing (Debian: `apt-get install -y systemd`).
* Helm: `helm lint` + `helm template` when `helm` is on PATH. Without helm
  (not packaged in Debian, PyPI or npm), every template is rendered by simple
  value substitution (control lines dropped, `{{ ... }}` replaced by
  placeholders) and parsed as YAML; kinds, probes and ports are checked.
  This is NOT a real Go-template render.
* Grafana: the dashboard is valid JSON with queries (that every metric it
  queries exists in a live scrape is checked by the Rust test
  `grafana_dashboard_queries_only_exported_metrics` in crates/mtgate/tests/admin.rs).
"""

import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

try:
    import yaml
except ImportError:  # pragma: no cover
    yaml = None

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")
UNIT = os.path.join(DEPLOY, "systemd", "mtgate.service")
CHART = os.path.join(DEPLOY, "helm", "mtgate")
HEALTH = {"/health/live", "/health/ready", "/health/startup"}


def mtgate_binary():
    env = os.environ.get("MTGATE_BIN")
    if env and os.access(env, os.X_OK):
        return env
    roots = [os.path.join(ROOT, "target"), os.environ.get("CARGO_TARGET_DIR", "")]
    for r in filter(None, roots):
        for p in glob.glob(os.path.join(r, "*", "mtgate")):
            if os.access(p, os.X_OK):
                return p
    return shutil.which("true")


class SystemdUnit(unittest.TestCase):
    def setUp(self):
        with open(UNIT) as f:
            self.text = f.read()

    def test_hardening_directives(self):
        for d in [
            "DynamicUser=yes",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "StateDirectory=mtgate",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "Type=notify",
            "NotifyAccess=main",
            "WatchdogSec=30s",
        ]:
            self.assertIn(d + "\n", self.text, d)

    @unittest.skipUnless(shutil.which("systemd-analyze"), "systemd-analyze not installed")
    def test_systemd_analyze_verify(self):
        binary = mtgate_binary()
        text = self.text.replace("/usr/local/bin/mtgate", binary)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "mtgate.service")
            with open(path, "w") as f:
                f.write(text)
            # The socket unit (socket activation) is verified with its service.
            sock = os.path.join(d, "mtgate.socket")
            shutil.copy(os.path.join(DEPLOY, "systemd", "mtgate.socket"), sock)
            r = subprocess.run(
                ["systemd-analyze", "verify", path, sock],
                capture_output=True,
                text=True,
                timeout=60,
            )
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


SAMPLE_VALUES = ["--set", "users.alice=00112233445566778899aabbccddeeff",
                 "--set", "serviceMonitor.enabled=true"]


def naive_render(text):
    """Drops Go-template control lines and replaces expressions by placeholders."""
    out = []
    for line in text.splitlines():
        s = line.strip()
        if re.fullmatch(r"\{\{-?\s*(if|else|end|range|with|fail|define)\b.*\}\}", s):
            continue
        if re.fullmatch(r"\{\{-?.*\}\}", s):
            # A whole-line expression (include | nindent, toYaml ...) renders a mapping.
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}x-rendered: placeholder")
            continue
        out.append(re.sub(r"\{\{-?.*?-?\}\}", "X", line))
    return "\n".join(out)


def documents(rendered):
    return [d for d in yaml.safe_load_all(rendered) if d]


@unittest.skipIf(yaml is None, "PyYAML not installed (pip install pyyaml)")
class HelmChart(unittest.TestCase):
    def load_docs(self):
        if shutil.which("helm"):
            lint = subprocess.run(["helm", "lint", CHART, *SAMPLE_VALUES],
                                  capture_output=True, text=True, timeout=120)
            self.assertEqual(lint.returncode, 0, lint.stdout + lint.stderr)
            r = subprocess.run(["helm", "template", "t", CHART, *SAMPLE_VALUES],
                               capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            return documents(r.stdout)
        docs = []
        for p in sorted(glob.glob(os.path.join(CHART, "templates", "*.yaml"))):
            with open(p) as f:
                try:
                    docs += documents(naive_render(f.read()))
                except yaml.YAMLError as e:
                    self.fail(f"{p}: {e}")
        return docs

    def test_chart_files(self):
        with open(os.path.join(CHART, "Chart.yaml")) as f:
            chart = yaml.safe_load(f)
        self.assertEqual(chart["apiVersion"], "v2")
        self.assertEqual(chart["name"], "mtgate")
        with open(os.path.join(CHART, "values.yaml")) as f:
            values = yaml.safe_load(f)
        self.assertIn("adminPort", values)

    def test_templates_render_with_probes_on_health_endpoints(self):
        docs = self.load_docs()
        kinds = {d["kind"] for d in docs}
        self.assertTrue({"Deployment", "Service", "ConfigMap", "Secret", "ServiceMonitor"} <= kinds, kinds)
        dep = next(d for d in docs if d["kind"] == "Deployment")
        c = dep["spec"]["template"]["spec"]["containers"][0]
        paths = {c[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
        self.assertEqual(paths, HEALTH)
        self.assertEqual({c[p]["httpGet"]["port"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}, {"admin"})
        self.assertIn("admin", {p["name"] for p in c["ports"]})
        cm = next(d for d in docs if d["kind"] == "ConfigMap")
        self.assertIn("[admin]", cm["data"]["config.toml"])
        sm = next(d for d in docs if d["kind"] == "ServiceMonitor")
        self.assertEqual(sm["spec"]["endpoints"][0]["path"], "/metrics")


class GrafanaDashboard(unittest.TestCase):
    def test_dashboard_is_json_with_mtgate_queries(self):
        with open(os.path.join(DEPLOY, "grafana", "mtgate.json")) as f:
            dash = json.load(f)
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        self.assertGreaterEqual(len(exprs), 8)
        for e in exprs:
            self.assertIn("mtgate_", e)


if __name__ == "__main__":
    unittest.main()
