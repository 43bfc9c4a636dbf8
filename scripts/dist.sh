#!/usr/bin/env bash
# Builds the release archives: for each PLATFORM (GOOS/GOARCH; default
# linux/amd64 linux/arm64 darwin/amd64 darwin/arm64) one
# quictunnel-VERSION-GOOS-GOARCH.tar.gz holding coordinator, localproxy,
# reporter, README.md, LICENSE (if the tree has one) and contrib/, plus
# SHA256SUMS, in DIR (default dist/).
#
#   scripts/dist.sh [-o DIR] [PLATFORM...]
#   scripts/dist.sh -check [PLATFORM...]
#
# The archives are reproducible: the same commit and Go toolchain give the
# same bytes. Binaries: CGO_ENABLED=0, -trimpath, -buildvcs=false, version
# and commit stamped with -ldflags -X (VERSION and COMMIT from the
# environment, else git describe and git rev-parse). Archives: names
# sorted, every mtime SOURCE_DATE_EPOCH (default: the commit's time), owner
# and group 0, fixed modes, gzip -n.
#
# -check builds twice, the second time from a copy of the tree at another
# path with an empty build cache (so every package is compiled again), and
# fails unless the two SHA256SUMS are the same; it also checks what each
# archive holds (names, owner, mtime, modes, no name or time in the gzip
# header) and that the binary for this machine's platform, if built, says
# VERSION and COMMIT in --version.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

out=dist check=
platforms=()
while [ $# -gt 0 ]; do
  case $1 in
    -o) out=${2:?-o wants a directory}; shift ;;
    -check) check=1 ;;
    -*) echo "dist: unknown option $1 (want -o DIR, -check)" >&2; exit 2 ;;
    */*) platforms+=("$1") ;;
    *) echo "dist: $1 is not GOOS/GOARCH" >&2; exit 2 ;;
  esac
  shift
done
[ ${#platforms[@]} -gt 0 ] || platforms=(linux/amd64 linux/arm64 darwin/amd64 darwin/arm64)

VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo unknown)}
COMMIT=${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export VERSION COMMIT SOURCE_DATE_EPOCH

# build DIR: the archives and SHA256SUMS of the tree in the current
# directory into DIR.
build() {
  local dir=$1 stage platform os arch name
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  stage=$(mktemp -d)
  for platform in "${platforms[@]}"; do
    os=${platform%/*} arch=${platform#*/}
    name=quictunnel-$VERSION-$os-$arch
    mkdir -p "$stage/$name"
    CGO_ENABLED=0 GOOS=$os GOARCH=$arch go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X quictunnel/internal/service.version=$VERSION -X quictunnel/internal/service.commit=$COMMIT" \
      -o "$stage/$name/" ./cmd/coordinator ./cmd/localproxy ./cmd/reporter
    cp README.md "$stage/$name/"
    [ ! -e LICENSE ] || cp LICENSE "$stage/$name/"
    cp -R contrib "$stage/$name/"
    # Modes independent of the umask and of the checkout.
    find "$stage/$name" -type d -exec chmod 0755 {} +
    find "$stage/$name" -type f -exec chmod 0644 {} +
    chmod 0755 "$stage/$name/coordinator" "$stage/$name/localproxy" "$stage/$name/reporter"
    tar -C "$stage" --format=gnu --sort=name --mtime="@$SOURCE_DATE_EPOCH" \
      --owner=0 --group=0 --numeric-owner -cf - "$name" | gzip -n -9 >"$dir/$name.tar.gz"
  done
  rm -rf "$stage"
  (cd "$dir" && find . -maxdepth 1 -name 'quictunnel-*.tar.gz' -printf '%f\n' | LC_ALL=C sort | xargs sha256sum >SHA256SUMS)
}

if [ -z "$check" ]; then
  rm -f "$out"/quictunnel-*.tar.gz "$out/SHA256SUMS"
  build "$out"
  echo "dist: $(wc -l <"$out/SHA256SUMS") archives for $VERSION in $out/"
  exit 0
fi

# verify DIR: checks the archives in DIR and their SHA256SUMS.
verify() {
  local dir=$1 platform os arch name archive want got bin
  (cd "$dir" && sha256sum --quiet -c SHA256SUMS) || { echo "dist-check: SHA256SUMS does not match" >&2; return 1; }
  for platform in "${platforms[@]}"; do
    os=${platform%/*} arch=${platform#*/}
    name=quictunnel-$VERSION-$os-$arch
    archive=$dir/$name.tar.gz
    want=$( (cd contrib && find . -type f) | sed "s|^\.|$name/contrib|"
      printf '%s\n' "$name/README.md" "$name/coordinator" "$name/localproxy" "$name/reporter"
      [ ! -e LICENSE ] || echo "$name/LICENSE")
    got=$(tar -tzf "$archive" | grep -v '/$')
    if [ "$(LC_ALL=C sort <<<"$want")" != "$(LC_ALL=C sort <<<"$got")" ]; then
      echo "dist-check: $archive holds:" >&2; echo "$got" >&2; echo "want:" >&2; echo "$want" >&2
      return 1
    fi
    if [ "$got" != "$(LC_ALL=C sort <<<"$got")" ]; then
      echo "dist-check: $archive: names not sorted" >&2
      return 1
    fi
    if tar --numeric-owner --full-time -tvzf "$archive" | awk -v t="$(date -u -d "@$SOURCE_DATE_EPOCH" '+%Y-%m-%d %H:%M:%S')" \
        '$2 != "0/0" || $4 " " $5 != t || ($1 != "-rw-r--r--" && $1 != "-rwxr-xr-x" && $1 != "drwxr-xr-x") { print; bad=1 } END { exit bad }' >&2; then :; else
      echo "dist-check: $archive: an entry above is not owner 0/0, mtime SOURCE_DATE_EPOCH ($SOURCE_DATE_EPOCH), mode 644/755" >&2
      return 1
    fi
    # gzip header: flags (byte 3) without FNAME, MTIME (bytes 4-7) zero.
    if [ "$(od -An -tx1 -j3 -N5 "$archive" | tr -d ' \n')" != 0000000000 ]; then
      echo "dist-check: $archive: the gzip header holds a name or a time (gzip -n)" >&2
      return 1
    fi
    if [ "$platform" = "$(go env GOOS)/$(go env GOARCH)" ]; then
      bin=$(mktemp -d)
      tar -C "$bin" -xzf "$archive" "$name/coordinator"
      got=$(GOFLAGS=-buildvcs=false "$bin/$name/coordinator" --version)
      rm -rf "$bin"
      case $got in
        "coordinator version $VERSION commit $COMMIT "*) ;;
        *) echo "dist-check: coordinator --version says \"$got\", want version $VERSION commit $COMMIT" >&2; return 1 ;;
      esac
    fi
  done
}

tmp=$(mktemp -d)
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
start=$(date +%s)
build "$tmp/a"
mkdir "$tmp/src" "$tmp/cache"
tar --exclude=./.git --exclude=./bin --exclude=./dist -cf - . | tar -C "$tmp/src" -xf -
(cd "$tmp/src" && GOCACHE="$tmp/cache" build "$tmp/b")
if ! cmp -s "$tmp/a/SHA256SUMS" "$tmp/b/SHA256SUMS"; then
  echo "dist-check: two builds of $VERSION differ:" >&2
  diff "$tmp/a/SHA256SUMS" "$tmp/b/SHA256SUMS" >&2 || true
  exit 1
fi
verify "$tmp/a"
echo "dist-check: ${platforms[*]} built twice (the second from another path with an empty build cache) in $(($(date +%s) - start)) s: same bytes"
cat "$tmp/a/SHA256SUMS"
