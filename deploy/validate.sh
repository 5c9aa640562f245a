#!/usr/bin/env bash
# Static checks of deploy/: what this machine can check without Azure or a cluster.
#
#   deploy/validate.sh
#
#   - Bicep: every file parsed by pycep-parser (no Bicep compiler can be installed
#     here: it downloads a binary), then checkov's Bicep checks;
#   - Kubernetes: the base and the AKS overlay rendered by `kubectl kustomize`, the
#     rendered manifests validated against the API schemas (kubernetes-validate
#     --strict) and by checkov; yamllint over the sources in deploy/kubernetes;
#   - the Containerfile by checkov's Dockerfile checks.
# Every suppression is justified where it is written. The tools are pinned and
# installed into their own virtualenv (not the system's Python): KVR_DEPLOY_TOOLS.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=${KVR_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/kv-rotator-deploy-tools}
pins=(checkov==3.3.30 pycep-parser==0.5.1 yamllint==1.38.0 kubernetes-validate==1.37.0)
started=$SECONDS
if ! "$tools/bin/python" -m pip show -q "${pins[@]%%==*}" >/dev/null 2>&1; then
    echo "== installing ${pins[*]} into $tools"
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
fi
command -v kubectl >/dev/null || { echo "needs kubectl (kustomize is built in)" >&2; exit 1; }
# checkov: no calls home (nothing is reachable from CI anyway), no progress bars.
export BC_SKIP_MAPPING=TRUE LOG_LEVEL=ERROR
checkov=("$tools/bin/checkov" --quiet --compact --skip-download --output cli)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== Bicep: parse (pycep-parser)"
"$tools/bin/python" - deploy/bicep/*.bicep deploy/bicep/modules/*.bicep <<'EOF'
import sys
from pathlib import Path
import pycep

parser = pycep.BicepParser()
for name in sys.argv[1:]:
    parsed = parser.parse(file_path=Path(name))
    counts = {k: len(parsed.get(k) or {}) for k in ("parameters", "resources", "modules", "outputs")}
    undocumented = [p for p, v in (parsed.get("parameters") or {}).items()
                    if not any(d.get("type") == "description" for d in v.get("decorators", []))]
    if undocumented:
        sys.exit(f"{name}: parameters without @description: {', '.join(undocumented)}")
    print(f"ok {name}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
EOF

echo "== Bicep: checkov"
# CKV_AZURE_189 (vault public network access disabled) raises in checkov 3.3 on a
# conditional value (publicNetworkAccess: privateOnly ? 'Disabled' : 'Enabled', so
# Disabled by default): it is left out rather than counted as an error.
"${checkov[@]}" --framework bicep --directory deploy/bicep --skip-check CKV_AZURE_189

echo "== Kubernetes: render (kubectl kustomize)"
for dir in deploy/kubernetes/base deploy/kubernetes/overlays/aks; do
    out="$work/$(echo "$dir" | tr / -).yaml"
    kubectl kustomize "$dir" >"$out"
    echo "ok $dir: $(grep -c '^kind:' "$out") resources"
done

echo "== Kubernetes: yamllint (the sources; kustomize's output has its own layout)"
"$tools/bin/yamllint" --strict -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable}}' \
    deploy/kubernetes

echo "== Kubernetes: kubernetes-validate --strict"
"$tools/bin/kubernetes-validate" --strict --quiet "$work"/*.yaml

echo "== Kubernetes: checkov"
for rendered in "$work"/*.yaml; do
    "${checkov[@]}" --framework kubernetes --file "$rendered"
done

echo "== Containerfile: checkov"
# checkov recognizes Dockerfiles by name only.
cp deploy/container/Containerfile "$work/Dockerfile"
"${checkov[@]}" --framework dockerfile --file "$work/Dockerfile"

echo "deploy/validate.sh: all checks passed in $((SECONDS - started)) s"
