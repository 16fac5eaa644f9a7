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
#
# ccflow-test/agent:latest is the same plus the host's glibc libraries the
# claude CLI (a Bun-compiled ELF) links against, copied to the same paths as
# `ldd` lists them, so tests can bind-mount the host's `claude` binary into it
# and run agent sessions in a container. The binary itself is not in the image.
# The host's bash (and its libraries) is there too: the CLI's Bash tool needs
# bash. The CLI is found as `$CCFLOW_TEST_CLAUDE` or `$CCFLOW_CLAUDE`, else
# the claude-agent-sdk bundle, else `claude` on PATH; without any, `ldd
# /bin/sh`'s libraries are used (the same glibc set). The images carry a
# `ccflow.test-images` label: bump IMAGES_VERSION when their content changes.
# The agent image's label also names the libraries the CLI needs, so a CLI
# upgraded to need others (2.1.332 wants librt.so.1), or one installed after
# the image was built, gets a new image rather than failing to start in it.
#
# Honours DOCKER_HOST like the docker CLI. Idempotent; safe to run in parallel
# with itself (the build context is private and the tag is moved atomically).
set -eu

BUSYBOX_IMAGE=ccflow-test/busybox:latest
AGENT_IMAGE=ccflow-test/agent:latest
force=0
[ "${1:-}" = "--force" ] && force=1

if ! docker version >/dev/null 2>&1; then
    echo "docker-images: the Docker daemon is unreachable (is it running? set DOCKER_HOST)" >&2
    exit 1
fi

# Bumped when an image's content changes, so existing images are rebuilt.
IMAGES_VERSION=2

# wanted IMAGE LABEL: whether IMAGE must be (re)built to carry LABEL.
wanted() {
    [ "$force" = 1 ] && return 0
    version=$(docker image inspect --format '{{ index .Config.Labels "ccflow.test-images" }}' "$1" 2>/dev/null) || return 0
    [ "$version" != "$2" ]
}

find_busybox() {
    for candidate in /bin/busybox /usr/bin/busybox; do
        if [ -x "$candidate" ] && file -L "$candidate" 2>/dev/null | grep -q 'statically linked'; then
            echo "$candidate"
            return
        fi
    done
    # `file` may be missing: trust the busybox-static package instead.
    if ! dpkg -s busybox-static >/dev/null 2>&1; then
        echo "docker-images: installing busybox-static" >&2
        if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
        $sudo apt-get install -y busybox-static >/dev/null 2>&1 ||
            { $sudo apt-get update >/dev/null && $sudo apt-get install -y busybox-static >/dev/null; }
    fi
    echo /bin/busybox
}

find_claude() {
    for candidate in "${CCFLOW_TEST_CLAUDE:-}" "${CCFLOW_CLAUDE:-}"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return
        fi
    done
    for python in python3 python; do
        found=$("$python" -c 'import claude_agent_sdk, os; print(os.path.join(os.path.dirname(claude_agent_sdk.__file__), "_bundled", "claude"))' 2>/dev/null || true)
        if [ -n "$found" ] && [ -x "$found" ]; then
            echo "$found"
            return
        fi
    done
    command -v claude 2>/dev/null || true
}

# The libraries `ldd $1` lists, one per line.
libraries() {
    ldd "$1" | awk '/=>/ { print $3 } !/=>/ && $1 ~ /^\// { print $1 }'
}

claude=$(find_claude)
agent_libraries=$( (libraries "${claude:-/bin/sh}"; libraries "$(command -v bash)") | sort -u)
AGENT_LABEL="$IMAGES_VERSION-$(printf '%s\n' "$agent_libraries" | cksum | cut -d' ' -f1)"

if ! wanted "$BUSYBOX_IMAGE" "$IMAGES_VERSION" && ! wanted "$AGENT_IMAGE" "$AGENT_LABEL"; then
    exit 0
fi

busybox=$(find_busybox)
contexts=""
trap 'for c in $contexts; do rm -rf "$c"; done' EXIT

# Writes the common busybox root into directory $1, with PATH $2 and image
# label $3.
busybox_root() {
    mkdir -p "$1/bin" "$1/etc" "$1/tmp" "$1/workspace"
    chmod 1777 "$1/tmp"
    cp "$busybox" "$1/bin/busybox"
    for applet in $("$1/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -s busybox "$1/bin/$applet"
    done
    uid=$(id -u)
    gid=$(id -g)
    {
        echo "root:x:0:0:root:/root:/bin/sh"
        [ "$uid" = 0 ] || echo "ccflow:x:$uid:$gid:ccflow:/tmp:/bin/sh"
        echo "test:x:1234:1234:test:/tmp:/bin/sh"
        echo "nobody:x:65534:65534:nobody:/nonexistent:/bin/false"
    } >"$1/etc/passwd"
    {
        echo "root:x:0:"
        [ "$gid" = 0 ] || echo "ccflow:x:$gid:"
        echo "test:x:1234:"
        echo "nogroup:x:65534:"
    } >"$1/etc/group"
    cat >"$1/Dockerfile" <<EOF
FROM scratch
COPY . /
LABEL ccflow.test-images=$3
ENV PATH=$2
CMD ["/bin/sh"]
EOF
    printf 'Dockerfile\n.dockerignore\n' >"$1/.dockerignore"
}

# Copies the shared libraries `ldd $2` lists into root $1, at the same paths
# (symlinks resolved, so the image holds files, not dangling links).
copy_libraries() {
    libraries "$2" | while read -r lib; do
        [ -n "$lib" ] && [ -e "$lib" ] || continue
        mkdir -p "$1$(dirname "$lib")"
        cp -L "$lib" "$1$lib"
    done
}

# Builds context $2 as tag $1, removing the image the tag named before.
build() {
    old_id=$(docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true)
    # The legacy builder needs no registry for FROM scratch; BuildKit may be
    # absent on Debian's docker.io, so ask for the classic one explicitly.
    DOCKER_BUILDKIT=0 docker build --quiet --tag "$1" "$2" >/dev/null 2>&1 ||
        DOCKER_BUILDKIT=0 docker build --tag "$1" "$2"
    new_id=$(docker image inspect --format '{{.Id}}' "$1")
    # A forced rebuild would otherwise leave the previous image dangling.
    if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
        docker image rm "$old_id" >/dev/null 2>&1 || true
    fi
    echo "docker-images: built $1 ($new_id)" >&2
}

if wanted "$BUSYBOX_IMAGE" "$IMAGES_VERSION"; then
    context=$(mktemp -d)
    contexts="$contexts $context"
    busybox_root "$context" /bin "$IMAGES_VERSION"
    build "$BUSYBOX_IMAGE" "$context"
fi

if wanted "$AGENT_IMAGE" "$AGENT_LABEL"; then
    context=$(mktemp -d)
    contexts="$contexts $context"
    busybox_root "$context" /usr/local/bin:/bin "$AGENT_LABEL"
    copy_libraries "$context" "${claude:-/bin/sh}"
    # The CLI's Bash tool needs bash (busybox's ash chokes on its snapshot
    # script): the host's, with its libraries.
    bash=$(command -v bash)
    cp -L "$bash" "$context/bin/bash"
    copy_libraries "$context" "$bash"
    # glibc resolves users through NSS; files-only lookups need no daemon.
    echo "passwd: files" >"$context/etc/nsswitch.conf"
    echo "group: files" >>"$context/etc/nsswitch.conf"
    echo "hosts: files dns" >>"$context/etc/nsswitch.conf"
    mkdir -p "$context/usr/local/bin"
    build "$AGENT_IMAGE" "$context"
fi
