#!/bin/sh
# check-contrib.sh: what can be checked here of the packaging in contrib/,
# where no container or service manager runs (make check counts it as one
# test):
#   - contrib/pgmux.service passes systemd-analyze verify (no warning either)
#     and is a Type=notify unit with ExecReload;
#   - contrib/kubernetes/pgmux.yaml parses as YAML and holds a Deployment of
#     two or more replicas with readiness on /readyz, liveness on /healthz
#     and a preStop hook, a Service, and a ConfigMap whose pgmux.ini, with
#     the Secret's files as secrets_dir, passes pgmux --check;
#   - contrib/Dockerfile is multi-stage from debian:12-slim, runs as a
#     non-root user, and every package it installs exists in Debian 12.
# Usage: check-contrib.sh TOP_SRCDIR PGMUX_BIN
set -u

TOP=$1
PGMUX=$2
WORK=$(mktemp -d "${TMPDIR:-/tmp}/check-contrib.XXXXXX") || exit 1
trap 'rm -rf "$WORK"' EXIT
failed=0
fail() {
	echo "check-contrib: $*" >&2
	failed=1
}

# ---------------------------------------------------------------- systemd unit
unit=$TOP/contrib/pgmux.service
if command -v systemd-analyze >/dev/null 2>&1; then
	# The unit names the installed binary; verify it against the one built here.
	sed "s#/usr/local/bin/pgmux#$PGMUX#g" "$unit" >"$WORK/pgmux.service"
	if ! systemd-analyze verify --man=no "$WORK/pgmux.service" >"$WORK/verify.out" 2>&1 ||
		[ -s "$WORK/verify.out" ]; then
		fail "systemd-analyze verify $unit:"
		cat "$WORK/verify.out" >&2
	fi
else
	echo "check-contrib: systemd-analyze not installed; the unit is only read" >&2
fi
grep -qx 'Type=notify' "$unit" || fail "$unit: not Type=notify"
grep -q '^ExecReload=' "$unit" || fail "$unit: no ExecReload"

# ---------------------------------------------------------------- Kubernetes
manifest=$TOP/contrib/kubernetes/pgmux.yaml
python3 - "$manifest" "$WORK" <<'PY' || failed=1
import os, sys
try:
    import yaml
except ImportError:
    sys.exit("check-contrib: python3-yaml is not installed")
path, work = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
problems = []
for kind in ("ConfigMap", "Secret", "Deployment", "Service"):
    if kind not in by_kind:
        problems.append("no %s" % kind)
if problems:
    sys.exit("check-contrib: %s: %s" % (path, "; ".join(problems)))
dep = by_kind["Deployment"][0]
spec = dep["spec"]
if spec.get("replicas", 1) < 2:
    problems.append("the Deployment has fewer than 2 replicas")
pod = spec["template"]["spec"]
container = pod["containers"][0]
if container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
    problems.append("no readiness probe on /readyz")
if container.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
    problems.append("no liveness probe on /healthz")
if "preStop" not in container.get("lifecycle", {}):
    problems.append("no preStop hook")
if not pod.get("securityContext", {}).get("runAsNonRoot"):
    problems.append("the pod may run as root")
mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
volumes = {v["name"]: v for v in pod["volumes"]}
secret_volume = [n for n, v in volumes.items() if "secret" in v]
config_volume = [n for n, v in volumes.items() if "configMap" in v]
if not secret_volume or not config_volume:
    problems.append("the Secret or the ConfigMap is not mounted")
ini = by_kind["ConfigMap"][0]["data"]["pgmux.ini"]
secrets_dir = [l.split("=", 1)[1].strip() for l in ini.splitlines() if l.strip().startswith("secrets_dir")]
if secret_volume and secrets_dir != [mounts[secret_volume[0]]]:
    problems.append("secrets_dir %s is not where the Secret is mounted" % secrets_dir)
service = by_kind["Service"][0]
if service["spec"]["selector"] != spec["selector"]["matchLabels"]:
    problems.append("the Service does not select the Deployment's pods")
if problems:
    sys.exit("check-contrib: %s: %s" % (path, "; ".join(problems)))
# The ConfigMap's pgmux.ini and the Secret's files, for pgmux --check.
os.makedirs(os.path.join(work, "secrets"), mode=0o700)
for name, text in by_kind["Secret"][0]["stringData"].items():
    fd = os.open(os.path.join(work, "secrets", name), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, text.encode())
    os.close(fd)
with open(os.path.join(work, "pgmux.ini"), "w") as f:
    f.write(ini.replace("secrets_dir = " + secrets_dir[0], "secrets_dir = " + os.path.join(work, "secrets")))
PY
if [ -f "$WORK/pgmux.ini" ] && ! "$PGMUX" --check "$WORK/pgmux.ini" >"$WORK/check.out" 2>&1; then
	fail "the ConfigMap's pgmux.ini does not pass pgmux --check:"
	cat "$WORK/check.out" >&2
fi

# ---------------------------------------------------------------- Dockerfile
dockerfile=$TOP/contrib/Dockerfile
[ "$(grep -c '^FROM debian:12-slim' "$dockerfile")" -ge 2 ] || fail "$dockerfile: not two stages from debian:12-slim"
grep -q '^COPY --from=build' "$dockerfile" || fail "$dockerfile: the last stage copies nothing from the build"
user=$(sed -n 's/^USER \([^: ]*\).*/\1/p' "$dockerfile" | tail -n 1)
case "$user" in
'' | 0 | root) fail "$dockerfile: runs as root" ;;
esac
if command -v apt-cache >/dev/null 2>&1; then
	# Every package named after "apt-get install ... --no-install-recommends" up to the next "&&".
	packages=$(sed -n '/--no-install-recommends/,/&&/p' "$dockerfile" | tr ' \\' '\n\n' |
		grep -E '^[a-z0-9][a-z0-9.+-]+$' | grep -vE '^(apt-get|install|rm)$')
	for p in $packages; do
		apt-cache show "$p" >/dev/null 2>&1 || fail "$dockerfile: no Debian package $p"
	done
fi

[ "$failed" -eq 0 ] && echo "check-contrib: passed"
exit "$failed"
