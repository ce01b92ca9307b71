#!/bin/bash
# Assembles a root filesystem that carries only what runs (see app/python-runtime/README.md).
#
#   assemble.sh python DEST STDLIB_LIST   the interpreter, the standard library modules named in
#                                         STDLIB_LIST (byte-compiled, no sources), the shared
#                                         libraries they link, CA certificates, passwd and group
#   assemble.sh venv DEST VENV            VENV copied to DEST/VENV: byte-compiled, no sources, no
#                                         pip/setuptools/wheel, no activate scripts, stripped
#   assemble.sh libs DEST ROOT FILE...    the shared libraries FILEs link that ROOT (an assembled
#                                         root) lacks, e.g. those of a venv's extension modules
#
# Libraries are found from the ELF dependencies (ldd) of what is kept, never from a list, and
# copied once, at their real path (the soname's symlink chain is kept as symlinks).
set -euo pipefail

PY=/usr/bin/python3.11
STDLIB=/usr/lib/python3.11
# The runtime user, as the images' USER.
UID_GID=10001

die() { echo "assemble.sh: $*" >&2; exit 1; }

is_elf() { [ "$(head -c 4 "$1" | od -An -c | tr -d ' ')" = '177ELF' ]; }

# copy PATH: PATH into $dest at its real directory, its symlinks (if PATH is one) as symlinks.
copy() {
  local p=$1 dir target
  while :; do
    dir=$(readlink -f "$(dirname "$p")")
    p="$dir/$(basename "$p")"
    mkdir -p "$dest$dir"
    if [ -L "$p" ]; then
      target=$(readlink "$p")
      [ -L "$dest$p" ] || ln -s "$target" "$dest$p"
      case $target in /*) p=$target ;; *) p="$dir/$target" ;; esac
    else
      [ -e "$dest$p" ] || cp -p "$p" "$dest$p"
      return 0
    fi
  done
}

# deps FILE...: the shared libraries (and the loader) the ELF files link, one path a line.
deps() {
  local f out
  for f in "$@"; do
    out=$(ldd "$f" 2>&1) || die "ldd $f: $out"
    if grep -q 'not found' <<<"$out"; then die "$f: unresolved dependencies: $out"; fi
    awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$out"
  done | sort -u
}

# The merged-/usr symlinks of the build's root (/lib -> usr/lib, ...), so that the paths ldd
# prints resolve in the new root too.
usrmerge() {
  local d
  for d in bin sbin lib lib32 lib64 libx32; do
    if [ -L "/$d" ] && [ ! -L "$dest/$d" ]; then ln -s "$(readlink "/$d")" "$dest/$d"; fi
  done
}

normalize() {
  # Identical inputs give identical bytes: no build-time timestamps in the layer.
  find "$dest" -exec touch -h -d @0 {} +
}

python_root() {
  local list=$1 name found elves
  mkdir -p "$dest"
  usrmerge
  copy "$PY"
  ln -s python3.11 "$dest/usr/bin/python3"
  # The standard library: one top-level module, package (kept whole) or extension module a line.
  while read -r name; do
    name=${name%%#*}; name=${name//[[:space:]]/}
    [ -n "$name" ] || continue
    found=
    # shellcheck disable=SC2206 # a line may be a glob (_sysconfigdata__linux_*)
    for p in "$STDLIB"/$name "$STDLIB"/$name.py "$STDLIB"/lib-dynload/$name.cpython-*.so; do
      [ -e "$p" ] || continue
      found=1
      mkdir -p "$dest$(dirname "$p")"
      cp -a "$p" "$dest$p"
    done
    [ -n "$found" ] || die "$name (in $list) is not in $STDLIB"
  done <"$list"
  find "$dest" -name __pycache__ -prune -exec rm -rf {} +
  # Bytecode in place of the sources (legacy .pyc next to where the .py was), written once here.
  "$PY" -m compileall -q -b -j 0 --invalidation-mode unchecked-hash -s "$dest" "$dest$STDLIB" >/dev/null
  find "$dest$STDLIB" ! -type d ! -name '*.pyc' ! -name '*.so' -delete
  # Shared libraries, from the ELF dependencies of the interpreter and the extension modules.
  # glibc loads libgcc_s at run time (pthread_exit, which CPython calls for daemon threads at
  # exit), invisible to ldd; it is the one library added by name.
  elves=$(find "$dest" -type f -print | while read -r f; do if is_elf "$f"; then echo "${f#"$dest"}"; fi; done)
  # shellcheck disable=SC2086
  for lib in $(deps $elves) $(ldconfig -p | awk '$1 == "libgcc_s.so.1" {print $NF; exit}'); do copy "$lib"; done
  find "$dest" -type f -name '*.so*' -exec strip --strip-unneeded {} +
  # CA certificates: the bundle, also where OpenSSL looks by default (ssl.create_default_context).
  copy /etc/ssl/certs/ca-certificates.crt
  mkdir -p "$dest/usr/lib/ssl"
  ln -s /etc/ssl/certs/ca-certificates.crt "$dest/usr/lib/ssl/cert.pem"
  # The runtime user (no shell, no home) and the name service (files first: localhost).
  printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nslimllm:x:%s:%s:slimllm:/nonexistent:/usr/sbin/nologin\n' \
    "$UID_GID" "$UID_GID" >"$dest/etc/passwd"
  printf 'root:x:0:\nslimllm:x:%s:\n' "$UID_GID" >"$dest/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$dest/etc/nsswitch.conf"
  mkdir -m 1777 "$dest/tmp"
  normalize
}

libs() {
  local root=$1 lib
  shift
  mkdir -p "$dest"
  usrmerge
  for lib in $(deps "$@"); do
    case $lib in /opt/*) continue ;; esac
    if [ -e "$root$lib" ]; then continue; fi
    copy "$lib"
  done
  find "$dest" -type f -name '*.so*' -exec strip --strip-unneeded {} +
  # The usrmerge links are the python root's; this layer must not carry them twice.
  for d in bin sbin lib lib32 lib64 libx32; do if [ -L "$dest/$d" ]; then rm "$dest/$d"; fi; done
  normalize
}

venv() {
  local venv=$1 site
  site=$(echo "$venv"/lib/python3.*/site-packages)
  mkdir -p "$dest$(dirname "$venv")"
  cp -a "$venv" "$dest$venv"
  venv=$dest$venv site=$dest$site
  rm -rf "$site"/pip "$site"/pip-* "$site"/setuptools "$site"/setuptools-* "$site"/_distutils_hack \
    "$site"/distutils-precedence.pth "$site"/pkg_resources "$site"/wheel "$site"/wheel-* "$venv"/include \
    "$venv"/bin/activate* "$venv"/bin/Activate.ps1 "$venv"/bin/pip*
  find "$venv" -name __pycache__ -prune -exec rm -rf {} +
  "$PY" -m compileall -q -b -j 0 --invalidation-mode unchecked-hash -s "$dest" "$site" >/dev/null
  find "$site" -name '*.py' -delete
  find "$venv" -type f -name '*.so*' -exec strip --strip-unneeded {} +
  normalize
}

mode=${1:-}; dest=${2:-}
[ -n "$mode" ] && [ -n "$dest" ] || die "usage: assemble.sh python DEST STDLIB_LIST | venv DEST VENV | libs DEST ROOT FILE..."
shift 2
case $mode in
  python) python_root "$@" ;;
  venv) venv "$@" ;;
  libs) libs "$@" ;;
  *) die "unknown mode '$mode'" ;;
esac
