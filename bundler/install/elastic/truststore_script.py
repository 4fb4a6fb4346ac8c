"""``es-truststore.sh``: the trust step for nodes without Python, and the container lines.

Hardened Elasticsearch nodes may have no Python, so the install also writes a
self-contained POSIX sh script (:func:`render_script`): the CA inlined as a heredoc,
nothing used but the node's own ``keytool`` and POSIX tools (``cp``, ``mv``, ``sed``,
``grep``, ``awk``, ``od``, ``cksum``, ``chgrp``, ``chmod``). It writes the same two files
as :func:`~.truststore.build_truststore`, byte for byte apart from the password, stamp
included, so either one recognises the other's work as current.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from bundler import __version__
from bundler.fsutil import atomic_write_bytes
from bundler.install.elastic.cacert import read_ca
from bundler.install.elastic.truststore import (
    HEADER,
    OPTIONS_DIR,
    OPTIONS_NAME,
    RESTART_STEP,
    STAMP,
    STORE_NAME,
    UNCHANGED_STEP,
)
from bundler.install.layout import Layout
from bundler.install.records import ServeRecord

_TEMPLATE = r"""#!/bin/sh
# es-truststore.sh: make this Elasticsearch node's JVM trust the airgap endpoint's CA,
# for the inference endpoint's calls to the model (Elasticsearch uses the JVM's default
# trust store for them, and nothing else).
# Written by airgap @VERSION@ for the CA with SHA-256 fingerprint
# @FINGERPRINT@.
#
# usage: sh es-truststore.sh --es-home DIR --es-path-conf DIR [--ca FILE]
#
# It copies the node's bundled JDK cacerts (never changed) into
# $ES_PATH_CONF/@STORE@, adds the CA with the node's own keytool, and
# writes $ES_PATH_CONF/@OPTDIR@/@OPTIONS@ (mode 0640, group of
# the config directory). Run it as root on every node, then restart the nodes one at a
# time. Rerun it after every Elasticsearch upgrade. Nothing but keytool and POSIX tools.
set -eu
umask 077
unset CDPATH

die() {
  printf 'error: %s\n' "$1" >&2
  if [ -n "${2-}" ]; then printf 'hint: %s\n' "$2" >&2; fi
  exit "${3:-1}"
}
usage="usage: sh es-truststore.sh --es-home DIR --es-path-conf DIR [--ca FILE]"
need() { [ "$2" -ge 2 ] || die "$1 needs a value" "$usage" 2; }

es_home=
path_conf=
ca_file=
while [ $# -gt 0 ]; do
  case $1 in
    --es-home) need "$1" $#; es_home=$2; shift 2 ;;
    --es-home=*) es_home=${1#*=}; shift ;;
    --es-path-conf) need "$1" $#; path_conf=$2; shift 2 ;;
    --es-path-conf=*) path_conf=${1#*=}; shift ;;
    --ca) need "$1" $#; ca_file=$2; shift 2 ;;
    --ca=*) ca_file=${1#*=}; shift ;;
    -h|--help) printf '%s\n' "$usage"; exit 0 ;;
    *) die "unknown option: $1" "$usage" 2 ;;
  esac
done
home_hint="--es-home is the Elasticsearch home with jdk/ in it"
home_hint="$home_hint (package installs: /usr/share/elasticsearch)."
conf_hint="--es-path-conf is the node's config directory, the one that holds"
conf_hint="$conf_hint elasticsearch.yml (package installs: /etc/elasticsearch)."
ca_hint="Pass the one CA certificate that signed the endpoint's server certificate."
root_hint="Run it as root on the Elasticsearch node."
[ -n "$es_home" ] || die "--es-home is required" "$home_hint" 2
[ -n "$path_conf" ] || die "--es-path-conf is required" "$conf_hint" 2
es_home=$(cd -- "$es_home" 2>/dev/null && pwd) || die "$es_home: not a directory" "$home_hint" 2
path_conf=$(cd -- "$path_conf" 2>/dev/null && pwd) \
  || die "$path_conf: not a directory" "$conf_hint" 2
keytool=$es_home/jdk/bin/keytool
cacerts=$es_home/jdk/lib/security/cacerts
if ! { [ -f "$keytool" ] && [ -x "$keytool" ]; }; then
  die "$keytool: no keytool (--es-home must hold the bundled JDK)" "$home_hint" 2
fi
[ -f "$cacerts" ] || die "$cacerts: no cacerts in the bundled JDK" "$home_hint" 2
store=$path_conf/@STORE@
optdir=$path_conf/@OPTDIR@
options=$optdir/@OPTIONS@
for f in "$store" "$options"; do
  if [ -d "$f" ]; then die "$f: is a directory" "Move it away: the trust step owns that name." 2; fi
done
# the group of the config directory (numeric): the elasticsearch user's
# shellcheck disable=SC2012
gid=$(ls -ldn "$path_conf" | awk '{print $4}')

work=$path_conf/.airgap-truststore.$$
mkdir "$work" || die "$work: cannot make a private work directory" "$root_hint"
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
kt() { "$keytool" -J-Duser.language=en -J-Duser.country=US "$@"; }
csum() { cksum < "$1" | awk '{print $1 ":" $2}'; }
# the config directory's group and a mode without "other": the ES user reads, others never
own() {
  chgrp "$gid" "$1" || die "$1: cannot give it group $gid (the config directory's)" "$root_hint"
  chmod "$2" "$1"
}
keytool_failed() {
  tail -n 3 "$work/log" >&2
  die "$keytool $1 failed" "$2"
}

if [ -n "$ca_file" ]; then
  [ -f "$ca_file" ] || die "$ca_file: no such file" "Check --ca." 2
  cp "$ca_file" "$work/ca.pem"
else
  cat > "$work/ca.pem" <<'AIRGAP_CA_PEM'
@CA_PEM@AIRGAP_CA_PEM
fi
n=$(grep -c -e '-----BEGIN CERTIFICATE-----' "$work/ca.pem" || true)
[ "$n" = 1 ] || die "${ca_file:-the CA}: holds $n certificates, not one" "$ca_hint" 2
if [ -n "$ca_file" ]; then
  kt -printcert -file "$work/ca.pem" > "$work/log" 2>&1 \
    || die "$ca_file: not a certificate keytool reads: $(tail -n 1 "$work/log")" "$ca_hint" 2
  grep -q 'CA:true' "$work/log" || die "$ca_file: not a CA certificate" "$ca_hint" 2
  fp=$(sed -n 's/^[[:space:]]*SHA256: //p' "$work/log" | head -n 1)
  alias=airgap-$(printf '%s' "$fp" | tr -d ':' | tr 'ABCDEF' 'abcdef' | cut -c1-16)
else
  alias=@ALIAS@
fi

want="@STAMP@ alias=$alias cacerts=$(csum "$cacerts")"
password=
action=created
if [ -e "$options" ] || [ -L "$options" ] || [ -e "$store" ] || [ -L "$store" ]; then
  action=updated
fi
if [ -f "$options" ] && [ ! -L "$options" ]; then
  password=$(sed -n \
    's/^-Djavax\.net\.ssl\.trustStorePassword=\([A-Za-z0-9]\{16,\}\)$/\1/p' "$options" \
    | head -n 1)
  if [ -f "$store" ] && [ ! -L "$store" ] \
    && grep -qxF -e "$want store=$(csum "$store")" "$options" \
    && grep -qxF -e "-Djavax.net.ssl.trustStore=$store" "$options"; then
    own "$store" 0640
    own "$options" 0640
    printf 'es-truststore: %s is current (CA %s, from %s)\n' "$store" "$alias" "$cacerts"
    printf 'next: %s\n' '@UNCHANGED@'
    exit 0
  fi
fi
# a JVM already running read the old password: keep it, so a rebuilt store still opens
if [ -z "$password" ]; then password=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n'); fi
printf '%s\n' "$password" > "$work/store.pw"
printf 'changeit\n' > "$work/cacerts.pw"
cp "$cacerts" "$work/cacerts"
kt -importkeystore -noprompt -srckeystore "$work/cacerts" -srcstorepass:file "$work/cacerts.pw" \
  -destkeystore "$work/store.p12" -deststoretype PKCS12 -deststorepass:file "$work/store.pw" \
  > "$work/log" 2>&1 || keytool_failed -importkeystore "$home_hint"
kt -importcert -noprompt -alias "$alias" -file "$work/ca.pem" -keystore "$work/store.p12" \
  -storetype PKCS12 -storepass:file "$work/store.pw" \
  > "$work/log" 2>&1 || keytool_failed -importcert "Check --ca."
own "$work/store.p12" 0640
{
  printf '%s' '@HEADER@'
  printf '%s store=%s\n' "$want" "$(csum "$work/store.p12")"
  printf -- '-Djavax.net.ssl.trustStore=%s\n' "$store"
  printf -- '-Djavax.net.ssl.trustStoreType=PKCS12\n'
  printf -- '-Djavax.net.ssl.trustStorePassword=%s\n' "$password"
} > "$work/options"
own "$work/options" 0640
if [ ! -d "$optdir" ]; then
  mkdir "$optdir"
  own "$optdir" 2750
fi
mv -f "$work/store.p12" "$store"
mv -f "$work/options" "$options"
printf 'es-truststore: %s %s (the JDK cacerts plus the CA as %s)\n' "$store" "$action" "$alias"
printf 'es-truststore: %s written\n' "$options"
printf 'next: %s\n' '@RESTART@'
"""


def render_script(ca_file: Path) -> str:
    """``es-truststore.sh`` with the CA in ``ca_file`` inlined.

    Raises:
        UsageError: ``ca_file`` is not one CA certificate.
    """
    ca = read_ca(ca_file)
    values = {
        "VERSION": __version__,
        "FINGERPRINT": ca.fingerprint,
        "STORE": STORE_NAME,
        "OPTDIR": OPTIONS_DIR,
        "OPTIONS": OPTIONS_NAME,
        "STAMP": STAMP,
        "ALIAS": ca.alias,
        "HEADER": HEADER.replace("'", "'\\''"),
        "RESTART": RESTART_STEP.replace("'", "'\\''"),
        "UNCHANGED": UNCHANGED_STEP.replace("'", "'\\''"),
        "CA_PEM": ca.pem.decode(),
    }
    text = _TEMPLATE
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


def write_script(path: Path, ca_file: Path) -> Path:
    """Write ``es-truststore.sh`` for ``ca_file`` to ``path`` (0755, atomically)."""
    atomic_write_bytes(path, render_script(ca_file).encode(), mode=0o755)
    return path


def write_install_script(layout: Layout, served: ServeRecord) -> Path | None:
    """The install's copy, ``Layout.es_truststore_script``, for the CA made here.

    A server certificate from the site's own PKI (``--tls-cert``) needs no trust step:
    then there is no script, and an older one is removed.
    """
    script = layout.es_truststore_script
    if Path(served.ca_cert) != layout.tls_dir / "ca.crt":
        with contextlib.suppress(FileNotFoundError):
            script.unlink()
        return None
    script.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    return write_script(script, Path(served.ca_cert))


def node_command(script: Path) -> str:
    """The exact command to run on each Elasticsearch node (package-install paths)."""
    return (
        f"copy {script} to every Elasticsearch node and run as root there: sh "
        f"{script.name} --es-home /usr/share/elasticsearch --es-path-conf /etc/elasticsearch "
        "(or `airgap elastic-truststore` with the same options); then restart the nodes "
        "one at a time"
    )


def docker_lines(ca_file: Path) -> str:
    """Container-image lines for nodes that run Elastic's image: its bundled JDK reads the
    operating system's trust bundle, so the CA goes there."""
    read_ca(ca_file)  # refuse anything but one CA certificate
    return (
        f"# Copy {ca_file} next to the Dockerfile as ca.pem.\n"
        "# Elastic's default image (Red Hat UBI):\n"
        "USER root\n"
        "COPY ca.pem /etc/pki/ca-trust/source/anchors/airgap.crt\n"
        "RUN update-ca-trust extract\n"
        "USER elasticsearch\n"
        "# Debian/Ubuntu-based and -wolfi images instead:\n"
        "# USER root\n"
        "# COPY ca.pem /usr/local/share/ca-certificates/airgap.crt\n"
        "# RUN update-ca-certificates\n"
        "# USER elasticsearch\n"
    )
