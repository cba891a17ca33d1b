#!/usr/bin/env bash
# What the runtime image adds to distroless static, assembled from a built ci-worker binary:
#
#   scripts/image-rootfs.sh BINARY ROOTFS DEBUG_FILE
#
#   ROOTFS/usr/local/bin/ci-worker   the binary with every symbol and all debug info stripped, and a
#                                    .gnu_debuglink to DEBUG_FILE (the build-id stays)
#   ROOTFS/<lib paths>               the shared libraries it links and the ELF interpreter, at the
#                                    paths `ldd` resolves them to on this machine (the glibc it was
#                                    linked against: the Dockerfile's build stage, or the host for
#                                    the runtime-prebuilt target)
#   DEBUG_FILE                       the symbols and debug info split off (`objcopy --only-keep-debug`)
#
# Used by the Dockerfile's build stage and by scripts/compose-check.sh; needs binutils (objcopy).
set -euo pipefail

die() { echo "image-rootfs.sh: error: $*" >&2; exit 1; }

(($# == 3)) || die "usage: image-rootfs.sh BINARY ROOTFS DEBUG_FILE"
bin=$1 root=$2 debug=$3
[[ -x $bin ]] || die "$bin is not an executable"
command -v objcopy >/dev/null || die "objcopy is missing (Debian: binutils)"

mkdir -p "$root/usr/local/bin" "$(dirname "$debug")"
objcopy --only-keep-debug "$bin" "$debug"
objcopy --strip-all --add-gnu-debuglink="$debug" "$bin" "$root/usr/local/bin/ci-worker"
chmod 0755 "$root/usr/local/bin/ci-worker"

# `ldd` lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2
# (0x...)", "linux-vdso.so.1 (0x...)" (in the kernel: nothing to copy), "libx.so => not found".
deps=$(ldd "$bin" 2>&1) || die "ldd $bin failed: $deps"
if grep -q 'not found' <<<"$deps"; then
  die "$bin links libraries this machine does not have:"$'\n'"$deps"
fi
libs=$(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$deps" | sort -u)
[[ -n $libs ]] || grep -q 'not a dynamic executable\|statically linked' <<<"$deps" ||
  die "no library in the ldd output of $bin:"$'\n'"$deps"
for lib in $libs; do
  # -L: the file itself where the path is a symlink; --parents: at the same path under ROOTFS.
  cp -L --parents "$lib" "$root"
done
echo "image-rootfs.sh: $root: ci-worker $(du -h "$root/usr/local/bin/ci-worker" | cut -f1)," \
  "$(wc -w <<<"$libs") libraries ($(tr '\n' ' ' <<<"$libs"| sed 's/ $//')); symbols in $debug"
