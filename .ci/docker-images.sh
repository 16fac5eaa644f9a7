#!/bin/sh
# Builds the Docker images ccflow's tests run, without any registry.
#
#   .ci/docker-images.sh            build what is missing (fast when present)
#   .ci/docker-images.sh --force    rebuild
#
# ccflow-test/busybox:latest is FROM scratch with Debian's static busybox
# (package `busybox-static`, installed with apt-get when missing), applets
# linked into /bin, a world-writable /tmp and an /etc/passwd naming root, the
# invoking user and uid 1234 (tests run containers as those users).
# Honours DOCKER_HOST like the docker CLI. Idempotent; safe to run in parallel
# with itself (the build context is private and the tag is moved atomically).
set -eu

IMAGE=ccflow-test/busybox:latest
force=0
[ "${1:-}" = "--force" ] && force=1

if ! docker version >/dev/null 2>&1; then
    echo "docker-images: the Docker daemon is unreachable (is it running? set DOCKER_HOST)" >&2
    exit 1
fi

if [ "$force" = 0 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    exit 0
fi

busybox=""
for candidate in /bin/busybox /usr/bin/busybox; do
    if [ -x "$candidate" ] && file -L "$candidate" 2>/dev/null | grep -q 'statically linked'; then
        busybox=$candidate
        break
    fi
done
if [ -z "$busybox" ]; then
    # `file` may be missing: trust the busybox-static package instead.
    if ! dpkg -s busybox-static >/dev/null 2>&1; then
        echo "docker-images: installing busybox-static" >&2
        if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
        $sudo apt-get install -y busybox-static >/dev/null 2>&1 ||
            { $sudo apt-get update >/dev/null && $sudo apt-get install -y busybox-static >/dev/null; }
    fi
    busybox=/bin/busybox
fi

old_id=$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/bin" "$context/etc" "$context/tmp" "$context/workspace"
chmod 1777 "$context/tmp"
cp "$busybox" "$context/bin/busybox"
for applet in $("$context/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$context/bin/$applet"
done
uid=$(id -u)
gid=$(id -g)
{
    echo "root:x:0:0:root:/root:/bin/sh"
    [ "$uid" = 0 ] || echo "ccflow:x:$uid:$gid:ccflow:/tmp:/bin/sh"
    echo "test:x:1234:1234:test:/tmp:/bin/sh"
    echo "nobody:x:65534:65534:nobody:/nonexistent:/bin/false"
} >"$context/etc/passwd"
{
    echo "root:x:0:"
    [ "$gid" = 0 ] || echo "ccflow:x:$gid:"
    echo "test:x:1234:"
    echo "nogroup:x:65534:"
} >"$context/etc/group"
cat >"$context/Dockerfile" <<'EOF'
FROM scratch
COPY . /
ENV PATH=/bin
CMD ["/bin/sh"]
EOF
printf 'Dockerfile\n.dockerignore\n' >"$context/.dockerignore"
# The legacy builder needs no registry for FROM scratch; BuildKit may be
# absent on Debian's docker.io, so ask for the classic one explicitly.
DOCKER_BUILDKIT=0 docker build --quiet --tag "$IMAGE" "$context" >/dev/null 2>&1 ||
    DOCKER_BUILDKIT=0 docker build --tag "$IMAGE" "$context"
new_id=$(docker image inspect --format '{{.Id}}' "$IMAGE")
# A forced rebuild would otherwise leave the previous image dangling.
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
    docker image rm "$old_id" >/dev/null 2>&1 || true
fi
echo "docker-images: built $IMAGE ($new_id)" >&2
