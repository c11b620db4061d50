#!/usr/bin/env bash
# vendor/pingora-core is the published pingora-core release plus the patch series
# vendor/patches/NNNN-*.patch (one change each, applied in order; vendor/README.md says what
# each does and why). This script makes that tree, so the vendored copy is never edited by hand.
#
#   scripts/vendor-pingora.sh           rebuild vendor/pingora-core
#   scripts/vendor-pingora.sh --check   (CI) fail unless vendor/pingora-core is exactly the
#                                       release + the series, and cargo builds with it
#
# Upgrading Pingora: set VERSION and SHA256 (of the .crate on crates.io) below, rerun, mend the
# patches that no longer apply (each is a plain `git diff`), bump the pingora versions in
# Cargo.toml, run the tests.
set -euo pipefail
VERSION=0.9.1
SHA256=a535f47f65fdcb003f9e1df04cd18e614c128dfe9388acce3f211ae38ac14d68
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

crate="$work/pingora-core-$VERSION.crate"
cached=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"pingora-core-$VERSION.crate" 2>/dev/null | head -1 || true)
if [ -n "$cached" ]; then
  cp "$cached" "$crate"
elif command -v curl >/dev/null; then
  curl -fsSL --retry 3 -o "$crate" "https://static.crates.io/crates/pingora-core/pingora-core-$VERSION.crate"
else
  echo "vendor-pingora: needs curl to fetch pingora-core $VERSION (apt-get install -y curl)" >&2
  exit 1
fi
if ! echo "$SHA256  $crate" | sha256sum -c --quiet - >/dev/null 2>&1; then
  echo "vendor-pingora: pingora-core-$VERSION.crate does not have the pinned SHA-256" >&2
  exit 1
fi
tar -xzf "$crate" -C "$work"
tree="$work/pingora-core-$VERSION"
# A library's lock file is not read by the crates that depend on it.
rm -f "$tree/Cargo.lock"
for patch in vendor/patches/*.patch; do
  if ! (cd "$tree" && GIT_DIR=/nonexistent git apply -p2 "$root/$patch"); then
    echo "vendor-pingora: $patch does not apply to pingora-core $VERSION" >&2
    exit 1
  fi
done

if [ "${1:-}" = "--check" ]; then
  if ! diff -r "$tree" vendor/pingora-core >"$work/diff" 2>&1; then
    echo "vendor-pingora: vendor/pingora-core is not pingora-core $VERSION + vendor/patches:" >&2
    head -20 "$work/diff" >&2
    echo "(make each change a patch in vendor/patches, then run scripts/vendor-pingora.sh)" >&2
    exit 1
  fi
  # A [patch] that no longer matches the version in use is only a cargo warning: check that
  # the build really takes the vendored tree.
  if ! cargo tree -i pingora-core -e normal --depth 0 2>/dev/null | grep -qF "pingora-core v$VERSION ($root/vendor/pingora-core)"; then
    echo "vendor-pingora: cargo does not build with vendor/pingora-core (is [patch.crates-io] still pingora-core $VERSION?)" >&2
    exit 1
  fi
  echo "vendor/pingora-core = pingora-core $VERSION + $(ls vendor/patches/*.patch | wc -l) patches, in use"
else
  rm -rf vendor/pingora-core
  cp -r "$tree" vendor/pingora-core
  echo "vendor/pingora-core rebuilt: pingora-core $VERSION + $(ls vendor/patches/*.patch | wc -l) patches"
fi
