#!/usr/bin/env bash
# Builds Fennec's Linux guest: a tiny PVH kernel (tinyconfig + guest/linux/kernel.config, from
# Debian's linux-source-6.1) and an initramfs whose /init is guest/linux/agent.c.
#
# Output: ${FENNEC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fennec}/guest-linux/<key>/
#   vmlinux            stripped PVH ELF (qemu -kernel, -M microvm and -M pc)
#   initramfs.cpio.gz  /init (the agent), /dev/console, mount points
#   manifest.json      {"key","kernel","initramfs","linuxVersion","builtAt",...}; file names are
#                      relative to the manifest's directory
# and then <cache>/guest-linux/current -> <key> (replaced atomically).
#
# <key> = sha256 (16 hex digits) of kernel.config, build.sh, agent.c and the linux-source package
# version. If <key> is already built, only `current` is updated. The kernel alone (the slow part,
# ~11 min on 2 cores) is cached separately under kernel-<kernel key>/, keyed by kernel.config,
# the linux-source version and KERNEL_RECIPE below, so an agent change rebuilds in seconds.
# Bump KERNEL_RECIPE when you change how the kernel is built.
#
# Environment: FENNEC_CACHE_DIR, FENNEC_LINUX_SOURCE (default /usr/src/linux-source-6.1.tar.xz),
# FENNEC_BUILD_JOBS (default: nproc), TMPDIR.
set -euo pipefail

# Everything is in main() (not indented, for the heredocs), so bash has read the whole script
# before it runs any of it: editing this file during a build cannot derail the build.
main() {
KERNEL_RECIPE=1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${FENNEC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fennec}/guest-linux
src_tar=${FENNEC_LINUX_SOURCE:-/usr/src/linux-source-6.1.tar.xz}
jobs=${FENNEC_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}
start=$SECONDS

log() { printf '[guest-linux +%ss] %s\n' "$((SECONDS - start))" "$*" >&2; }
die() {
  printf 'guest-linux: error: %s\n' "$*" >&2
  exit 1
}
hash16() { sha256sum | cut -c1-16; }

# --- keys (fast path: no tools beyond coreutils) ---
[ -r "$src_tar" ] || die "$src_tar not found: install the Debian package linux-source-6.1 (apt-get install linux-source-6.1)"
if command -v dpkg-query >/dev/null && pkg=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null) && [ -n "$pkg" ]; then
  src_version="linux-source-6.1 $pkg"
else
  src_version="$(basename "$src_tar") $(stat -c '%s %Y' "$src_tar")"
fi
for f in kernel.config build.sh agent.c; do
  [ -r "$here/$f" ] || die "missing $here/$f"
done
key=$({ cat "$here/kernel.config" "$here/build.sh" "$here/agent.c"; echo "$src_version"; } | hash16)
kkey=$({ cat "$here/kernel.config"; echo "$src_version recipe $KERNEL_RECIPE"; } | hash16)
out=$cache/$key
kdir=$cache/kernel-$kkey

point_current() {
  ln -sfn "$key" "$cache/.current.$$"
  mv -Tf "$cache/.current.$$" "$cache/current"
}

if [ -f "$out/manifest.json" ] && [ -f "$out/vmlinux" ] && [ -f "$out/initramfs.cpio.gz" ]; then
  point_current
  log "up to date: $out"
  echo "$out"
  exit 0
fi

# --- tools ---
missing=()
need() { command -v "$1" >/dev/null || missing+=("$2"); }
need gcc gcc
need make make
need flex flex
need bison bison
need bc bc
need perl perl
need xz xz-utils
need tar tar
need gzip gzip
need objcopy binutils
need strip binutils
[ -e /usr/include/libelf.h ] || missing+=(libelf-dev)
[ -e /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
  die "missing build tools; install the Debian packages: apt-get install $(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')"
fi

mkdir -p "$cache"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/fennec-guest-linux.XXXXXX")
trap 'rm -rf "$tmp" "$cache/.staging-$key.$$" "$cache/.staging-kernel-$kkey.$$" "$cache/.current.$$"' EXIT

export KBUILD_BUILD_TIMESTAMP='Thu Jan  1 00:00:00 UTC 1970'
export KBUILD_BUILD_USER=fennec KBUILD_BUILD_HOST=fennec KBUILD_BUILD_VERSION=1
export SOURCE_DATE_EPOCH=0 LC_ALL=C

# --- the agent first: fail fast, before the long kernel build ---
log "compiling the agent (gcc -static)"
gcc -static -O2 -Wall -Wextra -o "$tmp/init" "$here/agent.c" ||
  die "compiling agent.c failed (a static build needs libc6-dev)"
strip "$tmp/init"
touch -d @0 "$tmp/init" # gen_init_cpio -t does not cover regular files

# --- the kernel (cached by kernel key) ---
if [ -f "$kdir/vmlinux" ] && [ -x "$kdir/gen_init_cpio" ] && [ -f "$kdir/release" ]; then
  log "kernel cached: $kdir"
else
  log "extracting $src_tar"
  mkdir "$tmp/src"
  tar -xJf "$src_tar" -C "$tmp/src" --strip-components=1
  ko=$tmp/kout
  mk() { make -C "$tmp/src" O="$ko" "$@"; }
  log "configuring: tinyconfig + kernel.config"
  mk -s tinyconfig >"$tmp/config.log" 2>&1 || { cat "$tmp/config.log" >&2; die "make tinyconfig failed"; }
  (cd "$tmp/src" && scripts/kconfig/merge_config.sh -m -O "$ko" "$ko/.config" "$here/kernel.config") >>"$tmp/config.log" 2>&1 ||
    { cat "$tmp/config.log" >&2; die "merge_config.sh failed"; }
  mk -s olddefconfig >>"$tmp/config.log" 2>&1 || { cat "$tmp/config.log" >&2; die "make olddefconfig failed"; }
  # Every line of the fragment must survive olddefconfig.
  bad=0
  while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
      grep -qxF -- "$line" "$ko/.config" || {
        echo "  $line -> $(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" "$ko/.config" || echo 'absent (unmet dependency?)')" >&2
        bad=1
      }
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
      if grep -qE "^${BASH_REMATCH[1]}=" "$ko/.config"; then
        echo "  $line -> $(grep -E "^${BASH_REMATCH[1]}=" "$ko/.config")" >&2
        bad=1
      fi
    fi
  done <"$here/kernel.config"
  [ $bad = 0 ] || die "kernel.config lines not honoured by olddefconfig (see above)"

  log "building vmlinux with make -j$jobs (about 11 min on 2 cores; full log: kernel build log on failure)"
  mk -j"$jobs" vmlinux >"$tmp/build.log" 2>&1 &
  mpid=$!
  while kill -0 "$mpid" 2>/dev/null; do
    for _ in $(seq 30); do
      kill -0 "$mpid" 2>/dev/null || break
      sleep 1
    done
    kill -0 "$mpid" 2>/dev/null && log "  ... $(grep -c '^  CC ' "$tmp/build.log" || true) files compiled"
  done
  if ! wait "$mpid"; then
    tail -n 40 "$tmp/build.log" >&2
    die "kernel build failed (last 40 lines above)"
  fi
  release=$(mk -s kernelrelease)
  stage=$cache/.staging-kernel-$kkey.$$
  mkdir -p "$stage"
  objcopy --strip-all "$ko/vmlinux" "$stage/vmlinux"
  cp "$ko/.config" "$stage/config"
  # gen_init_cpio (built with the kernel) packs the initramfs without root.
  if [ -x "$ko/usr/gen_init_cpio" ]; then
    cp "$ko/usr/gen_init_cpio" "$stage/gen_init_cpio"
  else
    gcc -O2 -o "$stage/gen_init_cpio" "$tmp/src/usr/gen_init_cpio.c"
  fi
  echo "$release" >"$stage/release"
  rm -rf "$kdir" # a partial one; a concurrent build writes the same bytes
  mv -T "$stage" "$kdir" 2>/dev/null || [ -f "$kdir/vmlinux" ] || die "cannot install $kdir"
  log "kernel $release built: $kdir/vmlinux ($(($(stat -c %s "$kdir/vmlinux") / 1024)) KiB)"
fi

# --- the initramfs ---
log "packing the initramfs"
cat >"$tmp/initramfs.list" <<EOF
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /proc 0755 0 0
dir /sys 0755 0 0
dir /newroot 0755 0 0
file /init $tmp/init 0755 0 0
EOF
stage=$cache/.staging-$key.$$
mkdir -p "$stage"
"$kdir/gen_init_cpio" -t 0 "$tmp/initramfs.list" | gzip -n -9 >"$stage/initramfs.cpio.gz"
ln "$kdir/vmlinux" "$stage/vmlinux" 2>/dev/null || cp "$kdir/vmlinux" "$stage/vmlinux"
cat >"$stage/manifest.json" <<EOF
{
  "key": "$key",
  "kernel": "vmlinux",
  "initramfs": "initramfs.cpio.gz",
  "linuxVersion": "$(cat "$kdir/release")",
  "linuxSource": "$src_version",
  "kernelKey": "$kkey",
  "builtAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
EOF
if [ ! -f "$out/manifest.json" ]; then
  rm -rf "$out"
  mv -T "$stage" "$out" 2>/dev/null || [ -f "$out/manifest.json" ] || die "cannot install $out"
fi
point_current
log "built $out (vmlinux $(($(stat -c %s "$out/vmlinux") / 1024)) KiB, initramfs $(($(stat -c %s "$out/initramfs.cpio.gz") / 1024)) KiB)"
echo "$out"
}

main "$@"
exit
