#!/usr/bin/env bash
# Kubernetes' own schemas for deploy/: every resource deploy/kustomization.yaml
# lists, checked strictly (unknown fields refused) by PyPI's
# kubernetes-validate against the oldest and the newest Kubernetes deploy/
# is meant for.
#
# usage: hack/kube-validate.sh [FILE...]
#        hack/kube-validate.sh json FILE
#
#   FILE...  what to check (default: deploy/'s resources).
#   json     prints FILE's YAML documents as one JSON array (for tests that
#            read the manifests as the API server would).
#   The validator lives in a venv at .cache/kubernetes-validate (made on
#   first use, from PyPI).
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VALIDATOR_VERSION=1.37.0
# RuntimeClass scheduling and the pod-security namespace label are GA from
# 1.25 on.
K8S_VERSIONS=(1.25.0 1.37.0)
venv=$CACHE/kubernetes-validate

ensure_venv() {
	if [[ -x $venv/bin/kubernetes-validate ]] &&
		[[ $("$venv/bin/kubernetes-validate" --version 2>/dev/null) == "$VALIDATOR_VERSION" ]]; then
		return
	fi
	rm -rf "$venv"
	python3 -m venv "$venv" || die "python3 -m venv $venv failed"
	run_logged "$CACHE/logs/kubernetes-validate-pip.log" \
		"$venv/bin/pip" install --quiet "kubernetes-validate==$VALIDATOR_VERSION" ||
		die "pip install kubernetes-validate failed (see $CACHE/logs/kubernetes-validate-pip.log)"
}

ensure_venv
if [[ ${1:-} == json ]]; then
	(($# == 2)) || die "usage: hack/kube-validate.sh json FILE"
	exec "$venv/bin/python" -c '
import json, sys, yaml
with open(sys.argv[1]) as f:
    print(json.dumps([d for d in yaml.safe_load_all(f) if d is not None]))
' "$2"
fi

files=("$@")
if ((${#files[@]} == 0)); then
	mapfile -t files < <("$venv/bin/python" -c '
import sys, yaml
for r in yaml.safe_load(open(sys.argv[1]))["resources"]:
    print(r)
' "$REPO/deploy/kustomization.yaml")
	files=("${files[@]/#/$REPO/deploy/}")
fi
for k in "${K8S_VERSIONS[@]}"; do
	"$venv/bin/kubernetes-validate" --strict --quiet -k "$k" "${files[@]}" ||
		die "deploy/ does not validate against Kubernetes $k"
	echo "Kubernetes $k: valid: ${files[*]#"$REPO/"}"
done
