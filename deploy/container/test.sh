#!/usr/bin/env bash
# Builds deploy/container/Containerfile with podman and runs the image's filesystem.
#
#   deploy/container/test.sh                           # the release binary (cargo build --release)
#   KVR_IMAGE_PROFILE=debug deploy/container/test.sh   # the debug binary (what CI's tests built)
#
# No base image can be pulled here and no container can be started (crun cannot set
# rlimits), so:
#   1. the runtime base is assembled FROM scratch out of this host's files: the shared
#      libraries `ldd` lists for the binary, the CA bundle, /etc/passwd and /etc/group
#      with the distroless users (root, nonroot 65532, nobody), /etc/nsswitch.conf and a
#      writable /tmp (what distroless cc-debian12 provides), imported as an image;
#   2. the same Containerfile is built on it with BINARY_FROM=prebuilt (its `build` stage,
#      which needs the Rust image, is skipped);
#   3. the built image is saved, its layers unpacked into one folder, and the image's
#      own files run there through chroot as the image's user (65532), with nothing from
#      the host: `kv-rotator --version`, `kv-rotator demo`, and `kv-rotator dev` probed by
#      the image's HEALTHCHECK command (healthy while it serves, unhealthy once stopped),
#      its admin listener (/readyz, /metrics) on a port of its own, and the webhook's
#      port answering no /metrics.
# Needs root (chroot), podman (installed if missing) and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."

profile=${KVR_IMAGE_PROFILE:-release}
tag=localhost/kv-rotator:test-$$
base_tag=localhost/kv-rotator-base:test-$$
passed=0
failed=0
started=$SECONDS

step() { printf '== %s (%ds)\n' "$1" $((SECONDS - started)); }
ok() { echo "ok: $1"; passed=$((passed + 1)); }
fail() { echo "FAILED: $1" >&2; failed=$((failed + 1)); }

[ "$(id -u)" = 0 ] || { echo "needs root (chroot)" >&2; exit 1; }
if ! command -v podman >/dev/null; then
    step "installing podman"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman >/dev/null
fi

step "binary ($profile)"
if [ "$profile" = release ]; then
    cargo build --locked --quiet --release -p kv-rotator
else
    cargo build --locked --quiet -p kv-rotator
fi
# The build context is the repository: the binary must be at target/PROFILE/kv-rotator
# (the path /.dockerignore lets through), also when CARGO_TARGET_DIR is elsewhere.
bin=target/$profile/kv-rotator
built=${CARGO_TARGET_DIR:-target}/$profile/kv-rotator
if [ "$(realpath -m "$built")" != "$(realpath -m "$bin")" ]; then
    mkdir -p "target/$profile"
    cp "$built" "$bin"
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
if ldd "$bin" | grep -Eq 'libssl|libcrypto'; then
    fail "default features link OpenSSL"
else
    ok "default features link no OpenSSL"
fi

work=$(mktemp -d)
dev_pid=
podman images --all --quiet --no-trunc | sort -u >"$work/images.before"
cleanup() {
    if [ -n "$dev_pid" ]; then kill "$dev_pid" 2>/dev/null || true; fi
    podman rmi -f "$tag" "$base_tag" >/dev/null 2>&1 || true
    # The build's stage images (untagged) that this run made, and only those.
    podman images --all --quiet --no-trunc | sort -u | comm -13 "$work/images.before" - |
        xargs -r podman rmi -f >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

step "runtime base from the host's files"
base=$work/base
mkdir -p "$base/etc/ssl/certs" "$base/tmp" "$base/home/nonroot"
chmod 1777 "$base/tmp"
chown 65532:65532 "$base/home/nonroot"
# Each library at the path the loader looks for it, as a file (links resolved).
for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    install -D -m 0755 "$(readlink -f "$lib")" "$base$lib"
done
cp /etc/ssl/certs/ca-certificates.crt "$base/etc/ssl/certs/"
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$base/etc/passwd"
printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"$base/etc/group"
echo 'hosts: files dns' >"$base/etc/nsswitch.conf"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >"$base/etc/hosts"
tar -C "$base" -c . | podman import --quiet - "$base_tag" >/dev/null

step "podman build"
podman build --quiet --pull=never --format docker \
    --file deploy/container/Containerfile \
    --build-arg RUNTIME_BASE="$base_tag" \
    --build-arg BINARY_FROM=prebuilt \
    --build-arg BINARY="$bin" \
    --build-arg VERSION="$version" \
    --tag "$tag" . >/dev/null
size=$(podman image inspect "$tag" --format '{{.Size}}')
echo "image size: $((size / 1024 / 1024)) MiB"

step "unpacking the image"
podman save --quiet --format docker-archive -o "$work/image.tar" "$tag"
mkdir "$work/archive" "$work/root"
tar -C "$work/archive" -xf "$work/image.tar"
manifest() { python3 -c "import json,sys; m=json.load(open(sys.argv[1]))[0]; print($1)" "$work/archive/manifest.json"; }
# The image's configuration as a Docker engine reads it (not podman's view of it).
python3 -c "import json,sys; json.dump(json.load(open(sys.argv[1]))['config'], open(sys.argv[2], 'w'))" \
    "$work/archive/$(manifest "m['Config']")" "$work/config.json"
manifest "'\\n'.join(m['Layers'])" | while read -r layer; do
    tar -C "$work/root" -xpf "$work/archive/$layer"
done
root=$work/root

step "image configuration"
check_config() { # python expression over the image's Config -> ok/fail
    if python3 -c "import json,sys; c=json.load(open(sys.argv[1])); sys.exit(0 if ($2) else 1)" "$work/config.json"; then
        ok "$1"
    else
        fail "$1: $(cat "$work/config.json")"
    fi
}
check_config "runs as 65532:65532" "c.get('User') == '65532:65532'"
check_config "version label $version" "c['Labels']['org.opencontainers.image.version'] == '$version'"
check_config "entrypoint is the binary" "c['Entrypoint'] == ['/usr/local/bin/kv-rotator']"
check_config "HEALTHCHECK through the binary" "c['Healthcheck']['Test'][:3] == ['CMD', '/usr/local/bin/kv-rotator', 'healthcheck']"

if [ -e "$root/bin/sh" ] || [ -e "$root/usr/bin/sh" ] || [ -e "$root/usr/bin/dpkg" ] || [ -e "$root/usr/bin/apt" ]; then
    fail "the image has a shell or a package manager"
else
    ok "no shell, no package manager"
fi

# The image's files only: no variable of the host's, the image's user.
chroot=$(command -v chroot)
in_image() {
    env -i PATH=/usr/local/bin HOME=/home/nonroot \
        "$chroot" --userspec=65532:65532 "$root" /usr/local/bin/kv-rotator "$@"
}

step "kv-rotator --version"
if [ "$(in_image --version)" = "kv-rotator $version" ]; then ok "--version"; else fail "--version"; fi

step "kv-rotator demo as 65532"
t0=$SECONDS
if in_image demo >"$work/demo.out" 2>&1; then
    ok "demo ($((SECONDS - t0)) s)"
    grep -iE 'rotated|new password|old password' "$work/demo.out" | head -5 || true
else
    cat "$work/demo.out" >&2
    fail "demo"
fi

step "HEALTHCHECK against kv-rotator dev"
# Ports of this run's own (the admin listener too: its default, 127.0.0.1:9464, may be
# taken by another process on this host).
read -r listen vault_port admin_port < <(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
# The image's HEALTHCHECK command with the URL pointed at this run's port.
mapfile -t probe < <(python3 -c "
import json, sys
t = json.load(open(sys.argv[1]))['Healthcheck']['Test'][2:]
i = t.index('--url'); t[i + 1] = t[i + 1].replace(':8080/', ':$listen/')
print('\n'.join(t))" "$work/config.json")
[ "${probe[0]:-}" = healthcheck ] || { fail "no HEALTHCHECK command to run"; probe=(healthcheck --url "http://127.0.0.1:$listen/healthz"); }
in_image "${probe[@]}" 2>/dev/null && fail "healthy before the service started" || ok "unhealthy before the service started"
# exec: env, chroot and kv-rotator are one process, so $! is the service's pid.
(exec env -i PATH=/usr/local/bin HOME=/home/nonroot "$chroot" --userspec=65532:65532 "$root" \
    /usr/local/bin/kv-rotator dev --state-dir /tmp/kvr-dev --listen "127.0.0.1:$listen" \
    --vault-addr "127.0.0.1:$vault_port" --admin-listen "127.0.0.1:$admin_port") >"$work/dev.log" 2>&1 &
dev_pid=$!
healthy=
for _ in $(seq 1 120); do
    if in_image "${probe[@]}" 2>/dev/null; then healthy=1; break; fi
    kill -0 "$dev_pid" 2>/dev/null || break
    sleep 0.5
done
if [ -n "$healthy" ]; then ok "healthy while kv-rotator dev serves"; else cat "$work/dev.log" >&2; fail "healthcheck"; fi
# The admin listener, asked with the image's own binary (2xx or not).
admin_ok() { in_image healthcheck --url "http://127.0.0.1:$admin_port$1" 2>/dev/null; }
if admin_ok /readyz; then ok "admin /readyz ready"; else fail "admin /readyz"; fi
if admin_ok /metrics; then ok "admin /metrics"; else fail "admin /metrics"; fi
in_image healthcheck --url "http://127.0.0.1:$listen/metrics" 2>/dev/null &&
    fail "the webhook's port serves /metrics" || ok "no /metrics on the webhook's port"
kill -TERM "$dev_pid" 2>/dev/null || true
wait "$dev_pid" 2>/dev/null || true
dev_pid=
in_image "${probe[@]}" 2>/dev/null && fail "healthy after the service stopped" || ok "unhealthy after the service stopped"

echo "deploy/container/test.sh took $((SECONDS - started)) s"
echo "image: $passed passed, $failed failed"
[ "$failed" = 0 ]
