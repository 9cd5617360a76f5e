#!/usr/bin/env bash
# Builds the real Kubernetes control plane the tests run — kube-apiserver and
# kube-controller-manager from k8s.io/kubernetes, etcd from go.etcd.io/etcd/server/v3, at the
# versions in versions.env — from source through the Go module proxy, once, into
#
#   ${VIRTGUARD_CONTROL_PLANE_CACHE:-~/.cache/virtguard/control-plane}/<KUBERNETES_VERSION>/bin
#
# A warm machine pays nothing: when the three binaries are there and report the pinned versions
# the script exits at once. The build uses its own GOMODCACHE and GOCACHE beside that directory
# and deletes them after a successful build (several GiB that nothing needs afterwards); set
# VIRTGUARD_CONTROL_PLANE_KEEP_GO_CACHE=1 to keep them. Builds run under `nice -n 10`, one at a
# time. Needs Go >= the `go` line of the modules (1.26.0 for v1.37.2; the machine's go1.26.8
# serves, no GOTOOLCHAIN download) and the Go module proxy. Figures: README.md here.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"

k8s="$KUBERNETES_VERSION"
etcd="$ETCD_VERSION"
root="${VIRTGUARD_CONTROL_PLANE_CACHE:-$HOME/.cache/virtguard/control-plane}"
out="$root/$k8s"
bins=(kube-apiserver kube-controller-manager etcd)

# `<binary> --version` of a good build: "Kubernetes v1.37.2"; "etcd Version: 3.7.0" first line.
reports_version() { # reports_version <dir> <binary>
  local v
  v="$("$1/$2" --version 2>/dev/null)" || return 1
  v="${v%%$'\n'*}" # the first line (no `| head`: under pipefail its SIGPIPE would fail the check)
  case "$2" in
    etcd) [ "$v" = "etcd Version: ${etcd#v}" ] ;;
    *) [ "$v" = "Kubernetes $k8s" ] ;;
  esac
}
all_built() { # all_built <dir>
  local b
  for b in "${bins[@]}"; do
    [ -x "$1/$b" ] && reports_version "$1" "$b" || return 1
  done
}

if all_built "$out/bin"; then
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "virtguard: building the control plane needs Go (>= the go line of $here/*/go.mod) on PATH" >&2
  exit 1
fi

mkdir -p "$root"
exec 9>"$root/$k8s.lock"
flock 9 # another build of the same version finishes first; then there is nothing left to do
if all_built "$out/bin"; then
  exit 0
fi

echo "virtguard: building kube-apiserver, kube-controller-manager ($k8s) and etcd ($etcd) from source with $(go env GOVERSION) (once per version: ~11 min, 13 CPU-minutes, 4.4 GiB of Go caches)" >&2
export GOMODCACHE="$root/go/mod" GOCACHE="$root/go/build"
export CGO_ENABLED=0 GOFLAGS=-mod=readonly
tmp="$out/bin.partial"
rm -rf "$tmp"
mkdir -p "$tmp"

# /version as a release build reports it (hack/lib/version.sh): the tag, its major/minor and the
# tag's own date from the module proxy (so the build is reproducible). The module zip carries no
# git metadata, so the commit is empty and the tree state is "archive", as Kubernetes stamps a
# build from a source archive.
tag_time="$(cd "$here/kube-apiserver" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)"
minor="${k8s#v1.}"
minor="${minor%%.*}"
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X '$pkg.gitVersion=$k8s' -X '$pkg.gitMajor=1' -X '$pkg.gitMinor=$minor'"
  kube_ldflags+=" -X '$pkg.gitCommit=' -X '$pkg.gitTreeState=archive' -X '$pkg.buildDate=$tag_time'"
done

build() { # build <module dir> <package> <binary> <ldflags>
  local start=$SECONDS
  (cd "$here/$1" && nice -n 10 go build -trimpath -buildvcs=false -ldflags "$4" -o "$tmp/$3" "$2")
  echo "virtguard: built $3 in $((SECONDS - start))s ($(du -h "$tmp/$3" | cut -f1))" >&2
}
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver "$kube_ldflags"
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager "$kube_ldflags"
build etcd go.etcd.io/etcd/server/v3 etcd "-s -w"

for b in "${bins[@]}"; do
  if ! reports_version "$tmp" "$b"; then
    echo "virtguard: $tmp/$b --version does not report the pinned version: $("$tmp/$b" --version 2>&1)" >&2
    exit 1
  fi
done
rm -rf "$out/bin"
mv "$tmp" "$out/bin"
if [ "${VIRTGUARD_CONTROL_PLANE_KEEP_GO_CACHE:-0}" != 1 ]; then
  du -sh "$GOMODCACHE" "$GOCACHE" >&2 || true
  go clean -modcache # the module cache is read-only; go clean is how it is removed
  rm -rf "$GOCACHE" "$root/go"
fi
echo "virtguard: control plane $k8s ready in $out/bin" >&2
