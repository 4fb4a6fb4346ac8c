#!/bin/sh
# Install airgap from this tool bundle, offline, with a system python3.X.
#
#   tar -xf airgap-tool-X.Y.Z.tar -C airgap-tool && cd airgap-tool
#   sh tool/install.sh --prefix /opt/airgap-tool --trusted-key release.pub
#
# Before anything is installed, the bundle is checked with openssl and sha256sum only:
# the Ed25519 signature over airgap/index.json by a trusted key, the expiry it states,
# SHA256SUMS equal to the sums in that signed index, and every file against them, all
# on a private copy (so nothing can change between the check and the install). Then a
# virtualenv is created in PREFIX/versions/X.Y.Z and the bundle's wheels are installed
# with pip --no-index; PREFIX/current is switched to it atomically (the version before
# stays as PREFIX/previous, for `airgap self-update --rollback`), and PREFIX/bin/airgap
# points at PREFIX/current/bin/airgap.
#
# Written by `airgap tool-bundle`. POSIX sh (checked with dash -n and shellcheck).
# Exit codes as airgap's: 1 failure, 2 usage, 3 verification (nothing installed).
set -eu

AIRGAP_VERSION='@AIRGAP_VERSION@'
PYTHONS='@PYTHONS@'
ARCHES='@ARCHES@'

prog=install.sh
fail() {
    code=$1 msg=$2
    shift 2
    printf '%s: error: %s\n' "$prog" "$msg" >&2
    for line in "$@"; do printf '%s: hint: %s\n' "$prog" "$line" >&2; done
    exit "$code"
}
say() { printf '%s: %s\n' "$prog" "$*"; }

usage() {
    cat <<EOF
usage: sh tool/install.sh --prefix DIR --trusted-key KEY.pub [--trusted-key KEY2.pub ...]
                          [--require-signatures N] [--python PYTHON] [--openssl OPENSSL]

Checks this tool bundle (airgap $AIRGAP_VERSION) with openssl and sha256sum, then
installs it into DIR/versions/$AIRGAP_VERSION and makes DIR/bin/airgap run it.
Wheels for CPython $PYTHONS on $ARCHES.
EOF
}

prefix='' python='' openssl=openssl threshold=1 nkeys=0
while [ $# -gt 0 ]; do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --prefix | --trusted-key | --require-signatures | --python | --openssl)
            [ $# -ge 2 ] || fail 2 "$1 needs a value"
            case $1 in
                --prefix) prefix=$2 ;;
                --trusted-key) nkeys=$((nkeys + 1)); eval "key_$nkeys=\$2" ;;
                --require-signatures) threshold=$2 ;;
                --python) python=$2 ;;
                --openssl) openssl=$2 ;;
            esac
            shift 2 ;;
        *) usage >&2; fail 2 "unknown argument: $1" ;;
    esac
done
[ -n "$prefix" ] || fail 2 "--prefix DIR is required" "e.g. --prefix /opt/airgap-tool"
[ "$nkeys" -gt 0 ] || fail 2 "--trusted-key KEY.pub is required" \
    "the public key of the release signer, obtained over a separate trusted path"
case $threshold in '' | *[!0-9]*) fail 2 "--require-signatures needs a number" ;; esac
[ "$threshold" -ge 1 ] || fail 2 "--require-signatures must be at least 1"
case $prefix in /*) ;; *) prefix=$(pwd)/$prefix ;; esac

# -- the tools: only POSIX utilities, openssl and sha256sum ---------------------------
for tool in "$openssl" sha256sum tr sed grep cmp cp mkdir mktemp chmod rm sort head tail cut uname date env; do
    command -v "$tool" >/dev/null 2>&1 || fail 1 "$tool not found" \
        "install it from the OS (openssl: dnf/apt-get install openssl; sha256sum: coreutils)"
done
if ! "$openssl" pkeyutl -help 2>&1 | grep -q -- '-rawin'; then
    fail 1 "$("$openssl" version 2>/dev/null || echo "$openssl") cannot check Ed25519 signatures (no pkeyutl -rawin, new in OpenSSL 3.0)" \
        "RHEL 8 ships OpenSSL 1.1.1: pass an OpenSSL 3 binary with --openssl (EPEL 8 packages it as openssl3), or check the bundle on a host with OpenSSL 3"
fi

root=$(cd "$(dirname "$0")/.." && pwd -P)
if [ ! -f "$root/airgap/index.json" ] || [ ! -f "$root/airgap/SHA256SUMS" ]; then
    fail 2 "$root is not an extracted tool bundle (no airgap/index.json)" \
        "extract it first: tar -xf airgap-tool-$AIRGAP_VERSION.tar -C DIR; then sh DIR/tool/install.sh"
fi

umask 022
stage=$(mktemp -d "${TMPDIR:-/tmp}/airgap-tool.XXXXXX") || fail 1 "cannot create a temporary directory"
trap 'rm -rf "$stage"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
chmod 700 "$stage"

# -- 1. the signature over the index, by enough distinct trusted keys -------------------
cp "$root/airgap/index.json" "$stage/index.json"
good=0 seen=' ' i=0 key=
while [ "$i" -lt "$nkeys" ]; do
    i=$((i + 1))
    eval "key=\$key_$i"
    [ -r "$key" ] || fail 2 "$key: cannot read the trusted key"
    "$openssl" pkey -pubin -in "$key" -noout -text 2>/dev/null | head -n 1 | grep -q 'ED25519' ||
        fail 2 "$key: not an Ed25519 public key (PEM)" "use the .pub file written by airgap keygen"
    keyid=$("$openssl" pkey -pubin -in "$key" -outform DER | tail -c 32 | sha256sum | cut -c1-64)
    case $seen in *" $keyid "*) continue ;; esac
    seen="$seen$keyid "
    sig="$root/airgap/signatures/$keyid.sig"
    [ -f "$sig" ] || continue
    cp "$sig" "$stage/$keyid.sig"
    if "$openssl" pkeyutl -verify -pubin -inkey "$key" -rawin -in "$stage/index.json" \
        -sigfile "$stage/$keyid.sig" >/dev/null 2>&1; then
        good=$((good + 1))
    else
        fail 3 "airgap/index.json: the signature by $keyid does not verify" \
            "the index was altered after it was signed: do not use this copy; copy the tool bundle again"
    fi
done
[ "$good" -ge "$threshold" ] || fail 3 "airgap/index.json: $good valid signature(s) by the trusted keys, $threshold required" \
    "pass the release signer's public key with --trusted-key"
index_sha256=$(sha256sum "$stage/index.json" | cut -c1-64)

# -- 2. expiry, as the signed index states it ------------------------------------------
expires=$(sed -n 's/^{"chunk_size":[0-9]*,"created":"[^"]*","expires":"\([0-9T:Z-]*\)".*/\1/p' "$stage/index.json")
[ -n "$expires" ] || fail 3 "airgap/index.json: no expiry found; not a tool bundle index"
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
if [ "$(printf '%s\n%s\n' "$now" "$expires" | LC_ALL=C sort | tail -n 1)" = "$now" ]; then
    fail 3 "this tool bundle expired at $expires" "build and sign a fresh one on the connected side"
fi

# -- 3. SHA256SUMS must be the sums in the signed index, and every file must match -----
# Canonical JSON: each file entry is {"chunks":[...],"path":"P","sha256":"H","size":N}.
tr '{' '\n' <"$stage/index.json" |
    sed -n 's/^"chunks":\[[^]]*\],"path":"\([^"]*\)","sha256":"\([0-9a-f]\{64\}\)","size":[0-9]*}.*$/\2  \1/p' \
        >"$stage/SHA256SUMS"
cmp -s "$stage/SHA256SUMS" "$root/airgap/SHA256SUMS" ||
    fail 3 "airgap/SHA256SUMS differs from the sums in the signed index" \
        "this copy was altered after it was signed: do not use it"
while read -r sum path; do
    : "$sum"
    case $path in
        tool/*) ;;
        *) fail 3 "$path: a tool bundle carries only tool/ files" ;;
    esac
    case $path in *..* | *//* | *[!A-Za-z0-9._+/-]*) fail 3 "$path: unexpected file name" ;; esac
    [ -f "$root/$path" ] || fail 3 "$path: missing" "extract the whole tool bundle again"
    mkdir -p "$stage/$(dirname "$path")"
    cp "$root/$path" "$stage/$path"
done <"$stage/SHA256SUMS"
if ! (cd "$stage" && sha256sum -c SHA256SUMS >check.out 2>&1); then
    bad=$(sed -n 's/: FAILED.*$//p' "$stage/check.out" | tr '\n' ' ')
    fail 3 "damaged: ${bad:-see sha256sum -c airgap/SHA256SUMS}" \
        "copy the tool bundle again (its sha256 is printed by the build); nothing was installed"
fi
pip_wheel=''
for w in "$stage"/tool/wheels/pip-*-py3-none-any.whl; do [ -f "$w" ] && pip_wheel=$w; done
[ -n "$pip_wheel" ] || fail 3 "tool/wheels: no pip wheel; not a tool bundle airgap wrote"
say "checked: signed by $good trusted key(s), expires $expires, every file matches (index sha256 $index_sha256)"

# -- 4. this machine and its Python ----------------------------------------------------
arch=$(uname -m)
case " $ARCHES " in
    *" $arch "*) ;;
    *) fail 1 "this tool bundle carries wheels for $ARCHES; this host is $arch" \
        "build one for it: airgap tool-bundle --platform manylinux2014_$arch ..." ;;
esac

pyver() { "$1" -I -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
carried() { case " $PYTHONS " in *" $1 "*) return 0 ;; esac; return 1; }

no_python() {
    newest='' oldest=''
    for v in $PYTHONS; do
        [ -n "$oldest" ] || oldest=$v
        newest=$v
    done
    rhel=''
    for v in 3.12 3.11; do carried "$v" && [ -z "$rhel" ] && rhel=$v; done
    os_id='' os_ver=''
    if [ -r /etc/os-release ]; then
        os_id=$(sed -n 's/^ID="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)
        os_ver=$(sed -n 's/^VERSION_ID="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)
    fi
    printf '%s: error: %s\n' "$prog" "$1" >&2
    printf '%s: hint: install one from the OS'"'"'s own repositories, then run this again (or pass --python):\n' "$prog" >&2
    if [ -n "$rhel" ]; then
        printf '  RHEL 9 (and Rocky/Alma 9):  dnf install python%s   (AppStream)\n' "$rhel" >&2
        printf '  RHEL 8 (8.8 and later):     dnf install python%s   (AppStream; python3.12 from 8.10)\n' "$rhel" >&2
    fi
    carried 3.12 && printf '  Ubuntu 24.04:               apt-get install python3.12   (its python3)\n' >&2
    carried 3.11 && printf '  Ubuntu 22.04:               apt-get install python3.11   (universe)\n' >&2
    carried 3.11 && printf '  Debian 12:                  apt-get install python3.11   (its python3)\n' >&2
    carried 3.13 && printf '  Debian 13:                  apt-get install python3.13   (its python3)\n' >&2
    printf '  (this host: %s %s; this bundle: CPython %s to %s)\n' "${os_id:-unknown}" "$os_ver" "$oldest" "$newest" >&2
    exit 1
}

if [ -n "$python" ]; then
    v=$(pyver "$python") || fail 2 "--python $python does not run"
    carried "$v" || no_python "--python $python is Python $v; this tool bundle carries wheels for CPython $PYTHONS"
else
    found=''
    for v in $PYTHONS; do
        p=$(command -v "python$v" 2>/dev/null) || continue
        [ "$(pyver "$p")" = "$v" ] && python=$p
    done
    if [ -z "$python" ] && p=$(command -v python3 2>/dev/null); then
        v=$(pyver "$p") || v=''
        if carried "$v"; then python=$p; else found="python3 is $v"; fi
    fi
    [ -n "$python" ] || no_python "no suitable Python: this tool bundle carries wheels for CPython $PYTHONS${found:+ ($found)}"
fi
pyv=$(pyver "$python")

# -- 5. install beside any other version, then switch ---------------------------------
# Only root or this user may be able to change the path to the prefix (as for airgap's
# own --prefix): whoever can replace a file there runs code as the next airgap user.
env -i "$python" -I - "$prefix" <<'EOF' || exit 2
import os, stat, sys

path = os.path.abspath(sys.argv[1])
parts = path.strip("/").split("/")
for i in range(len(parts) + 1):
    p = "/" + "/".join(parts[:i])
    try:
        st = os.stat(p)
    except FileNotFoundError:
        break
    why = ""
    if not stat.S_ISDIR(st.st_mode):
        why = "not a directory"
    elif st.st_uid not in (0, os.geteuid()):
        why = "owned by uid %d, neither root nor this user" % st.st_uid
    elif st.st_mode & 0o022 and (p == path or not st.st_mode & stat.S_ISVTX):
        why = "writable by group or others"
    if why:
        sys.stderr.write(
            "install.sh: error: %s: %s; others could replace the airgap installed below it\n"
            "install.sh: hint: chown root %s && chmod go-w %s, or choose another --prefix\n"
            % (p, why, p, p)
        )
        sys.exit(2)
EOF
mkdir -p "$prefix/versions"
prefix=$(cd "$prefix" && pwd -P)
target=$prefix/versions/$AIRGAP_VERSION
marker=$target/.airgap-tool
if [ -f "$marker" ]; then
    had=$(sed -n 's/^index_sha256=//p' "$marker")
    [ "$had" = "$index_sha256" ] || fail 3 "airgap $AIRGAP_VERSION is installed in $target from another tool bundle (index sha256 $had)" \
        "a version names one content; remove $target by hand if you mean to replace it"
    say "airgap $AIRGAP_VERSION is already installed in $target"
else
    rm -rf "$target" # what a killed run left
    say "creating a virtualenv in $target with $python (Python $pyv)"
    "$python" -I -m venv --without-pip "$target" || fail 1 "$python -m venv failed"
    say "installing airgap $AIRGAP_VERSION and its dependencies (pip --no-index)"
    if ! env -i PATH="$PATH" HOME="$stage" PIP_CONFIG_FILE=/dev/null \
        "$target/bin/python" "$pip_wheel/pip" install --no-index --find-links "$stage/tool/wheels" \
        --only-binary=:all: --no-cache-dir --disable-pip-version-check --no-input --quiet \
        "airgap-bundler==$AIRGAP_VERSION" >"$stage/pip.out" 2>&1; then
        cat "$stage/pip.out" >&2
        rm -rf "$target"
        fail 1 "pip could not install from the wheelhouse" "see pip's output above; nothing was switched"
    fi
    got=$(env -i PATH="$PATH" HOME="$stage" "$target/bin/airgap" --version 2>&1) || got=''
    if [ "$got" != "airgap, version $AIRGAP_VERSION" ]; then
        rm -rf "$target"
        fail 1 "the installed airgap does not run: ${got:-no output}" "nothing was switched"
    fi
    printf 'index_sha256=%s\npython=%s\n' "$index_sha256" "$python" >"$marker"
fi

# The switch: rename(2) of a new link over PREFIX/current (POSIX mv cannot replace a
# link to a directory), done by the new virtualenv's own Python.
env -i "$target/bin/python" -I - "$prefix" "versions/$AIRGAP_VERSION" <<'EOF'
import os, sys

prefix, new = sys.argv[1], sys.argv[2]


def link(target, name):
    tmp = os.path.join(prefix, ".%s.%d" % (name, os.getpid()))
    os.symlink(target, tmp)
    os.replace(tmp, os.path.join(prefix, name))


current = os.path.join(prefix, "current")
if os.path.lexists(current) and not os.path.islink(current):
    sys.exit("install.sh: error: %s is not a symbolic link; refusing to replace it" % current)
old = os.readlink(current) if os.path.islink(current) else None
if old and old != new:
    link(old, "previous")
link(new, "current")
os.makedirs(os.path.join(prefix, "bin"), exist_ok=True)
entry = os.path.join(prefix, "bin", "airgap")
if not os.path.islink(entry):
    if os.path.lexists(entry):
        sys.exit("install.sh: error: %s exists and is not our link; remove it" % entry)
    os.symlink("../current/bin/airgap", entry)
fd = os.open(prefix, os.O_RDONLY)
os.fsync(fd)
os.close(fd)
EOF
say "installed: $prefix/bin/airgap is airgap $AIRGAP_VERSION (Python $pyv); put $prefix/bin on PATH"
