#!/usr/bin/env bash
# Builds an OCI image of bindgate without a container daemon: an image layout directory (and a
# .tar of it) that `skopeo copy oci:DIR:TAG docker-daemon:…`, `podman load`, `crane push` or a
# registry mirror take as it is.
#
#   scripts/image.sh                        release build, image in target/image (tag: version)
#   scripts/image.sh --binary PATH          that binary instead of a release build
#   scripts/image.sh --out DIR --tag TAG
#
# The root filesystem is minimal: the binary, the C library it links (nothing else: OpenSSL is
# built in), CA certificates, /etc/passwd and /etc/group with a `bindgate` user (uid/gid
# 10001), /etc/bindgate for the configuration, /var/lib/bindgate and /run/bindgate owned by
# that user, /tmp. The image runs as 10001, `bindgate run -c /etc/bindgate/proxy.yaml`, and
# exposes 8443 (listen) and 9901 (admin: /healthz, /readyz, /metrics for probes).
#
# Reproducible: every file has the time of the HEAD commit (or SOURCE_DATE_EPOCH), root or
# bindgate as owner, names sorted, gzip without a time stamp; the same binary gives the same
# digest. umoci (Debian's, installed when missing) checks the result.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

binary="" out="$root/target/image" tag=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    *) echo "image.sh: unknown argument $1 (--binary PATH, --out DIR, --tag TAG)" >&2; exit 2 ;;
  esac
done

need=()
command -v umoci >/dev/null 2>&1 || need+=(umoci)
command -v gzip >/dev/null 2>&1 || need+=(gzip)
command -v strip >/dev/null 2>&1 || need+=(binutils)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "image.sh: installing missing packages: ${need[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "image.sh: needs ${need[*]} (apt-get install -y ${need[*]})" >&2
    exit 1
  fi
fi

if [ -z "$binary" ]; then
  . scripts/prerequisites.sh
  cargo build --release
  binary=$root/target/release/bindgate
fi
[ -x "$binary" ] || { echo "image.sh: $binary is not an executable" >&2; exit 1; }
version=$("$binary" --version | awk '{print $2}')
[ -n "$tag" ] || tag=$version
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fs=$work/rootfs
mkdir -p "$fs"/{usr/local/bin,etc/bindgate,etc/ssl/certs,var/lib/bindgate,run/bindgate,tmp}
cp "$binary" "$fs/usr/local/bin/bindgate"
strip --strip-debug "$fs/usr/local/bin/bindgate"
# The shared libraries the binary loads, with their loader, as real files.
for lib in $(ldd "$binary" | awk '/=>/ {print $3} /^[[:space:]]*\/.*ld-linux/ {print $1}'); do
  mkdir -p "$fs$(dirname "$lib")"
  cp -L "$lib" "$fs$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$fs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nbindgate:x:10001:10001:bindgate:/var/lib/bindgate:/usr/sbin/nologin\n' >"$fs/etc/passwd"
printf 'root:x:0:\nbindgate:x:10001:\n' >"$fs/etc/group"
chmod 0755 "$fs/usr/local/bin/bindgate"
find "$fs" -type d -exec chmod 0755 {} +
find "$fs" -type f ! -path '*/usr/local/bin/bindgate' -exec chmod 0644 {} +
chmod 0755 "$fs"/lib*/ld-linux* 2>/dev/null || true
chmod 1777 "$fs/tmp"

# One layer: everything root's, then the two folders bindgate writes to, its own.
tarflags=(--sort=name --mtime="@$epoch" --numeric-owner --format=posix
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime)
(cd "$fs" && tar "${tarflags[@]}" --owner=0 --group=0 \
  --exclude=./var/lib/bindgate --exclude=./run/bindgate -cf "$work/layer.tar" .)
(cd "$fs" && tar "${tarflags[@]}" --owner=10001 --group=10001 --no-recursion \
  -cf "$work/owned.tar" ./run/bindgate ./var/lib/bindgate)
tar --concatenate -f "$work/layer.tar" "$work/owned.tar"
gzip -n -9 <"$work/layer.tar" >"$work/layer.tar.gz"

blobs=$work/layout/blobs/sha256
mkdir -p "$blobs"
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
diff_id=$(sha "$work/layer.tar")
layer=$(sha "$work/layer.tar.gz")
cp "$work/layer.tar.gz" "$blobs/$layer"

cat >"$work/config.json" <<EOF
{"architecture":"amd64","config":{"Cmd":["run","-c","/etc/bindgate/proxy.yaml"],"Entrypoint":["/usr/local/bin/bindgate"],"Env":["PATH=/usr/local/bin:/usr/bin:/bin","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt","BINDGATE_LOG=info"],"ExposedPorts":{"8443/tcp":{},"9901/tcp":{}},"Labels":{"org.opencontainers.image.revision":"$commit","org.opencontainers.image.source":"bindgate","org.opencontainers.image.title":"bindgate","org.opencontainers.image.version":"$version"},"StopSignal":"SIGTERM","User":"10001:10001","WorkingDir":"/etc/bindgate"},"created":"$created","history":[{"created":"$created","created_by":"scripts/image.sh"}],"os":"linux","rootfs":{"diff_ids":["sha256:$diff_id"],"type":"layers"}}
EOF
config=$(sha "$work/config.json")
cp "$work/config.json" "$blobs/$config"

cat >"$work/manifest.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config","size":$(size "$work/config.json")},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$layer","size":$(size "$work/layer.tar.gz")}]}
EOF
manifest=$(sha "$work/manifest.json")
cp "$work/manifest.json" "$blobs/$manifest"

printf '{"imageLayoutVersion":"1.0.0"}' >"$work/layout/oci-layout"
cat >"$work/layout/index.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest","size":$(size "$work/manifest.json"),"annotations":{"org.opencontainers.image.ref.name":"$tag"}}]}
EOF

# An independent reader of OCI layouts must find the image whole.
umoci stat --image "$work/layout:$tag" >/dev/null

rm -rf "$out"
mkdir -p "$(dirname "$out")"
cp -r "$work/layout" "$out"
(cd "$out" && tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner -cf "$out.tar" .)
echo "image: oci:$out:$tag (also $out.tar)"
echo "digest: sha256:$manifest"
