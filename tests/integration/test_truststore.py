"""Elasticsearch trusts the endpoint's CA: the trust step with a real JVM and real keytool.

A fake Elasticsearch node is a temp dir whose ``jdk/bin/keytool`` runs the system JDK's
keytool (through a wrapper that logs its arguments) and whose ``jdk/lib/security/cacerts``
is a copy, so a test can prove the node's own file is never changed. A one-file Java
client (``jvm/TrustProbe.java``, run in single-file source mode with the generated
``jvm.options.d`` file as its ``@argfile``) proves what the JVM then trusts: a real Nginx
serving the CA's certificate is trusted with the store and refused without it, and a
certificate the same CA signed for a name outside its NameConstraints is refused too.
OpenSSL checks the constraints the same way (with an unconstrained CA as the control).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bundler.install.elastic.cacert import cksum, read_ca
from bundler.install.elastic.truststore import build_truststore
from bundler.install.elastic.truststore_script import write_install_script, write_script
from bundler.install.elastic.truststore_state import check_nodes, record_node
from bundler.install.layout import Layout
from bundler.install.records import EngineSpec, Receipt, Release, ServedWith, ServeRecord
from bundler.install.state import ReceiptFile
from bundler.install.tlsgen import TlsFiles, _new_ca, ensure_tls
from devkit import services
from devkit.demo_data import make_demo_sources

from conftest import Keys, airgap, build_bundle

pytestmark = pytest.mark.integration
PROBE = Path(__file__).resolve().parent / "jvm" / "TrustProbe.java"
OPTIONS = Path("jvm.options.d/airgap-inference-truststore.options")
STORE = "inference-truststore.p12"
CONF_GID = 65534  # nogroup: the config directory's group, which the files must get


def system_jdk() -> Path:
    keytool = shutil.which("keytool")
    assert keytool, "keytool missing: scripts/setup installs openjdk-17-jdk-headless"
    return Path(os.path.realpath(keytool)).parents[1]


def keytool(*args: str, stdin: str | None = None) -> str:
    r = subprocess.run(
        ["keytool", "-J-Duser.language=en", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def password(conf: Path) -> str:
    lines = (conf / OPTIONS).read_text().splitlines()
    return next(x.split("=", 1)[1] for x in lines if "trustStorePassword=" in x)


def entries(store: Path, pw: str | None) -> dict[str, str]:
    """alias -> SHA-256 fingerprint of every entry (``pw`` None: a password-less store)."""
    args = ["-list", "-keystore", str(store)]
    out = keytool(*args, "-storepass:file", "/dev/stdin", stdin=pw + "\n") if pw else keytool(*args)
    found, alias = {}, None
    for line in out.splitlines():
        if ", trustedCertEntry," in line:
            alias = line.split(",")[0]
        elif line.startswith("Certificate fingerprint (SHA-256): ") and alias:
            found[alias] = line.split(": ", 1)[1].replace(":", "").lower()
            alias = None
    assert found, out
    return found


def fake_node(root: Path, *, passwordless: bool = False) -> tuple[Path, Path]:
    """An Elasticsearch home with a bundled JDK (keytool logs its argv) and a config dir."""
    jdk = system_jdk()
    home, conf = root / "home", root / "conf"
    (home / "jdk" / "bin").mkdir(parents=True)
    (home / "jdk" / "lib" / "security").mkdir(parents=True)
    conf.mkdir()
    os.chown(conf, -1, CONF_GID)
    wrapper = home / "jdk" / "bin" / "keytool"
    wrapper.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{root}/keytool-argv.log"\nexec "{jdk}/bin/keytool" "$@"\n'
    )
    wrapper.chmod(0o755)
    cacerts = home / "jdk" / "lib" / "security" / "cacerts"
    if passwordless:  # what upstream JDK 18+ ships, and so Elasticsearch's bundled JDK
        (root / "pw").write_text("changeit\n")
        keytool(
            "-J-Dkeystore.pkcs12.certProtectionAlgorithm=NONE",
            "-J-Dkeystore.pkcs12.macAlgorithm=NONE",
            "-importkeystore", "-noprompt", "-srckeystore", str(jdk / "lib/security/cacerts"),
            "-srcstorepass:file", str(root / "pw"), "-destkeystore", str(cacerts),
            "-deststoretype", "PKCS12", "-deststorepass:file", str(root / "pw"),
        )  # fmt: skip
    else:
        shutil.copyfile(jdk / "lib" / "security" / "cacerts", cacerts)
    return home, conf


def probe(url: str, options: Path | None) -> subprocess.CompletedProcess[str]:
    """The JVM's verdict on ``url``, with the generated options file as its @argfile."""
    java = shutil.which("java")
    assert java, "java missing: scripts/setup installs openjdk-17-jdk-headless"
    args = [java, *([f"@{options}"] if options else []), str(PROBE), url]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def sign_leaf(ca_dir: Path, out: Path, dns: str, ip: str, *, signer: str = "issuer") -> Path:
    """A server certificate for ``dns``/``ip`` (``server.crt``: it, then its issuer), signed
    with the key in ``ca_dir`` (``issuer``: the one airgap keeps on the GPU host)."""
    ca_key = serialization.load_pem_private_key((ca_dir / f"{signer}.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate((ca_dir / f"{signer}.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(dns)]
    sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    out.mkdir(parents=True, exist_ok=True)
    (out / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (out / "server.crt").write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
    return out


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return ensure_tls(tmp_path_factory.mktemp("tls"), ("llm.example.internal",), ("127.0.0.1",))


@pytest.fixture(scope="module")
def one_tier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A name-constrained CA that signs server certificates itself (no intermediate)."""
    root = tmp_path_factory.mktemp("one-tier")
    names = x509.NameConstraints([x509.DNSName("llm.example.internal")], None)
    key, ca = _new_ca(names, datetime.now(UTC), "one tier")
    pem = serialization.Encoding.PEM
    (root / "ca.crt").write_bytes(ca.public_bytes(pem))
    (root / "ca.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return root


@pytest.fixture(scope="module")
def nginx(
    tls: TlsFiles, one_tier: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Real Nginx on loopback: ``good`` serves the CA's server certificate, ``outside`` one
    signed with the same (intermediate) key for a name its NameConstraints do not permit,
    ``anchor_only`` one for such a name from a constrained CA with no intermediate."""
    root = tmp_path_factory.mktemp("ngx")
    outside = sign_leaf(tls.ca_cert.parent, root / "outside", "evil.example.com", "127.0.0.1")
    anchor = sign_leaf(one_tier, root / "anchor", "evil.example.com", "127.0.0.1", signer="ca")
    names = ("good", "outside", "anchor_only")
    ports = {name: services.free_port() for name in names}
    servers = "".join(
        f"  server {{ listen 127.0.0.1:{ports[name]} ssl; ssl_certificate {crt};"
        f" ssl_certificate_key {key}; location / {{ return 200 'ok'; }} }}\n"
        for name, crt, key in (
            ("good", tls.cert, tls.key),
            ("outside", outside / "server.crt", outside / "server.key"),
            ("anchor_only", anchor / "server.crt", anchor / "server.key"),
        )
    )
    (root / "nginx.conf").write_text(
        f"daemon off;\npid {root}/nginx.pid;\nerror_log {root}/error.log;\nworker_processes 1;\n"
        + ("user root;\n" if os.geteuid() == 0 else "")
        + "events { worker_connections 16; }\nhttp {\n"
        f"  access_log off; client_body_temp_path {root}/body; proxy_temp_path {root}/proxy;\n"
        f"  fastcgi_temp_path {root}/fcgi; uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;\n"
        + servers
        + "}\n"
    )
    with open(root / "stderr.log", "wb") as log:
        proc = subprocess.Popen(
            ["nginx", "-c", str(root / "nginx.conf"), "-p", str(root)], stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        for port in ports.values():
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close()
                    break
                except OSError:
                    log_text = (root / "error.log").read_text() if proc.poll() is not None else ""
                    assert time.monotonic() < deadline and not log_text, f"nginx: {log_text}"
                    time.sleep(0.1)
        yield {name: f"https://127.0.0.1:{port}/" for name, port in ports.items()}
    finally:
        proc.terminate()  # the nginx we started, by its PID
        proc.wait(timeout=30)


def test_openssl_verifies_only_names_the_ca_permits(tls: TlsFiles, tmp_path: Path) -> None:
    def verify(ca: Path, leaf: Path, *check: str) -> subprocess.CompletedProcess[str]:
        # server.crt: the server certificate, then the intermediate it was signed with
        cmd = ["openssl", "verify", "-CAfile", str(ca), "-untrusted", str(leaf), *check, str(leaf)]
        return subprocess.run(cmd, capture_output=True, text=True, check=False)

    ok = verify(tls.ca_cert, tls.cert, "-verify_hostname", "llm.example.internal")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    sub = sign_leaf(tls.ca_cert.parent, tmp_path / "sub", "a.llm.example.internal", "127.0.0.1")
    assert verify(tls.ca_cert, sub / "server.crt").returncode == 0  # a DNS subtree, RFC 5280
    for dns, ip in (("evil.example.com", "127.0.0.1"), ("llm.example.internal", "10.9.9.9")):
        leaf = sign_leaf(tls.ca_cert.parent, tmp_path / dns / ip, dns, ip) / "server.crt"
        bad = verify(tls.ca_cert, leaf)
        assert bad.returncode != 0
        assert "permitted subtree violation" in bad.stdout + bad.stderr
    # control: the same kind of leaf from an unconstrained CA verifies, so what refused the
    # leaf above is the constraint and nothing else about it
    free = tmp_path / "free"
    free.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(free / "ca.key"), "-out", str(free / "ca.crt"),
         "-subj", "/CN=unconstrained", "-days", "2",
         "-addext", "basicConstraints=critical,CA:true", "-addext", "keyUsage=keyCertSign"],
        check=True, capture_output=True,
    )  # fmt: skip
    leaf = sign_leaf(free, tmp_path / "free-leaf", "evil.example.com", "127.0.0.1", signer="ca")
    assert verify(free / "ca.crt", leaf / "server.crt").returncode == 0


def test_the_jvm_trusts_nginx_with_the_store_and_refuses_without_it(
    tls: TlsFiles, one_tier: Path, nginx: dict[str, str], tmp_path: Path
) -> None:
    home, conf = fake_node(tmp_path)
    original = (home / "jdk/lib/security/cacerts").read_bytes()
    result = build_truststore(home, conf, tls.ca_cert)
    assert result.action == "created"
    trusted = probe(nginx["good"], conf / OPTIONS)
    assert trusted.stdout.startswith("TRUSTED 200"), trusted.stdout + trusted.stderr
    # negative control: the same JVM and server without the options: Elasticsearch's error
    refused = probe(nginx["good"], None)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "PKIX path building failed" in refused.stdout
    # the CA's key signed a certificate for a name outside its constraints: refused even
    # with the store (the JVM enforces NameConstraints)
    outside = probe(nginx["outside"], conf / OPTIONS)
    assert outside.returncode == 3, outside.stdout + outside.stderr
    assert "name constraints check failed" in outside.stdout
    assert (home / "jdk/lib/security/cacerts").read_bytes() == original
    # why two tiers: the JVM ignores a trust anchor's own NameConstraints, so a constrained
    # CA that signs server certificates itself limits nothing there
    home2, conf2 = fake_node(tmp_path / "one-tier")
    build_truststore(home2, conf2, one_tier / "ca.crt")
    anchor = probe(nginx["anchor_only"], conf2 / OPTIONS)
    assert anchor.stdout.startswith("TRUSTED 200"), anchor.stdout + anchor.stderr


def test_store_is_cacerts_plus_the_ca_once_and_the_node_untouched(
    tls: TlsFiles, tmp_path: Path
) -> None:
    home, conf = fake_node(tmp_path)
    cacerts = home / "jdk/lib/security/cacerts"
    original = cacerts.read_bytes()
    victim = tmp_path / "victim"
    victim.write_bytes(b"not yours")
    (conf / STORE).symlink_to(victim)  # a link planted at the store's name is replaced
    first = build_truststore(home, conf, tls.ca_cert)
    assert victim.read_bytes() == b"not yours" and not (conf / STORE).is_symlink()
    for path in (conf / STORE, conf / OPTIONS):
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == CONF_GID, path
    pw = password(conf)
    store_bytes = (conf / STORE).read_bytes()
    again = build_truststore(home, conf, tls.ca_cert)
    assert (first.action, again.action) == ("updated", "unchanged")
    assert (conf / STORE).read_bytes() == store_bytes  # nothing rewritten
    assert cacerts.read_bytes() == original  # the node's own cacerts: byte for byte
    have = entries(conf / STORE, pw)
    node = entries(cacerts, None)
    ca = read_ca(tls.ca_cert)
    assert have == {**node, first.alias: ca.fingerprint}
    assert list(have.values()).count(ca.fingerprint) == 1
    assert first.alias == f"airgap-{ca.fingerprint[:16]}"
    for path in (conf / STORE, conf / OPTIONS):
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == CONF_GID, path
    lines = (conf / OPTIONS).read_text().splitlines()
    assert f"-Djavax.net.ssl.trustStore={conf / STORE}" in lines
    assert "-Djavax.net.ssl.trustStoreType=PKCS12" in lines
    # the password reached keytool only through a file, never its command line
    argv = (tmp_path / "keytool-argv.log").read_text()
    assert "-storepass:file" in argv and pw not in argv and "changeit" not in argv
    assert not list(conf.glob(".airgap-truststore*"))  # the work directory is gone


def test_the_sh_script_under_dash_builds_what_python_builds(tls: TlsFiles, tmp_path: Path) -> None:
    """Both paths on a password-less PKCS12 cacerts (upstream JDK 18+, as Elasticsearch
    bundles); each recognises the other's store as current (same files, same stamp)."""
    script = write_script(tmp_path / "es-truststore.sh", tls.ca_cert)
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    lint = subprocess.run(["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    py_home, py_conf = fake_node(tmp_path / "py", passwordless=True)
    sh_home, sh_conf = fake_node(tmp_path / "sh", passwordless=True)
    original = (sh_home / "jdk/lib/security/cacerts").read_bytes()
    victim = tmp_path / "victim"
    victim.write_bytes(b"not yours")
    (sh_conf / STORE).symlink_to(victim)

    def sh(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = ["dash", str(script), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)

    r = sh("--es-home", str(sh_home), "--es-path-conf", str(sh_conf))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "updated" in r.stdout and "rolling restart" in r.stdout
    assert victim.read_bytes() == b"not yours" and not (sh_conf / STORE).is_symlink()
    py = build_truststore(py_home, py_conf, tls.ca_cert)
    sh_entries = entries(sh_conf / STORE, password(sh_conf))
    assert sh_entries == entries(py_conf / STORE, password(py_conf))
    assert sh_entries[py.alias] == py.fingerprint
    assert (sh_home / "jdk/lib/security/cacerts").read_bytes() == original
    for path in (sh_conf / STORE, sh_conf / OPTIONS, sh_conf / OPTIONS.parent):
        assert path.stat().st_gid == CONF_GID and not path.stat().st_mode & 0o007, path
    pw = password(sh_conf)
    assert len(pw) == 48 and pw not in (tmp_path / "sh/keytool-argv.log").read_text()

    # the same options file but for the password and the store's own checksum (random salts):
    # so each path takes the other's work as current
    def text(conf: Path) -> list[str]:
        lines = (conf / OPTIONS).read_text().replace(str(conf), "CONF").splitlines()
        return [x.split(" store=")[0] for x in lines if "Password=" not in x]

    assert text(sh_conf) == text(py_conf)
    assert build_truststore(sh_home, sh_conf, tls.ca_cert).action == "unchanged"
    again = sh("--es-home", str(py_home), "--es-path-conf", str(py_conf), "--ca", str(tls.ca_cert))
    assert again.returncode == 0 and "is current" in again.stdout, again.stdout + again.stderr
    # refusals: usage errors are exit 2 with a hint; nothing is left behind
    for args, says in (
        (("--es-path-conf", str(sh_conf)), "--es-home is required"),
        (("--es-home", str(tmp_path), "--es-path-conf", str(sh_conf)), "no keytool"),
        (("--es-home", str(sh_home), "--es-path-conf", str(sh_conf), "--ca", str(tls.cert)),
         "holds 2 certificates"),
        (("--es-home", str(sh_home), "--es-path-conf", str(sh_conf), "--bogus"), "unknown option"),
    ):  # fmt: skip
        bad = sh(*args)
        assert bad.returncode == 2 and says in bad.stderr and "hint:" in bad.stderr, bad.stderr
    assert not list(sh_conf.glob(".airgap-truststore*"))


def test_a_changed_cacerts_is_noticed_and_a_rerun_catches_up(tls: TlsFiles, tmp_path: Path) -> None:
    home, conf = fake_node(tmp_path)
    prefix = tmp_path / "opt"
    (prefix / "state").mkdir(parents=True)
    result = build_truststore(home, conf, tls.ca_cert)
    assert record_node(prefix, home, result) == prefix / "state/es-truststores.json"
    assert [(n["state"], n["ok"]) for n in check_nodes(prefix)] == [("current", True)]
    # an Elasticsearch upgrade brings a new cacerts (here: one root fewer)
    cacerts = home / "jdk/lib/security/cacerts"
    gone = sorted(entries(cacerts, None))[0]
    (tmp_path / "pw").write_text("changeit\n")
    keytool("-delete", "-alias", gone, "-keystore", str(cacerts), "-storepass:file", str(tmp_path / "pw"))  # fmt: skip
    [row] = check_nodes(prefix)
    assert (
        row["state"] == "stale" and not row["ok"] and "airgap elastic-truststore" in row["detail"]
    )
    pw = password(conf)
    rerun = build_truststore(home, conf, tls.ca_cert)
    assert rerun.action == "updated"
    assert password(conf) == pw  # a JVM already running keeps opening the rebuilt store
    assert gone not in entries(conf / STORE, password(conf))
    assert check_nodes(prefix)[0]["state"] == "current"
    (conf / STORE).write_bytes(b"x")
    assert check_nodes(prefix)[0]["state"] == "modified"
    (conf / OPTIONS).unlink()
    assert check_nodes(prefix)[0]["state"] == "missing"
    # the checksum both paths stamp is POSIX cksum's
    out = subprocess.run(["cksum"], stdin=cacerts.open("rb"), capture_output=True, check=True)
    assert cksum(cacerts) == ":".join(out.stdout.decode().split()[:2])


def test_the_command_line(tls: TlsFiles, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    r = airgap("elastic-truststore", "--prefix", str(empty), "--print-docker")
    assert r.returncode == 2 and b"no CA installed under" in r.stderr and b"hint:" in r.stderr
    r = airgap("elastic-truststore", "--ca", str(tls.ca_cert), "--print-docker")
    assert r.returncode == 0
    out = r.stdout.decode()
    for line in (
        "COPY ca.pem /etc/pki/ca-trust/source/anchors/airgap.crt",
        "RUN update-ca-trust extract",
        "COPY ca.pem /usr/local/share/ca-certificates/airgap.crt",
        "RUN update-ca-certificates",
    ):
        assert line in out
    r = airgap("elastic-truststore", "--ca", str(tls.ca_cert), "--es-home", str(tmp_path))
    assert r.returncode == 2 and b"--es-path-conf are required" in r.stderr
    r = airgap("elastic-truststore", "--ca", str(tls.cert), "--print-docker")
    assert r.returncode == 2 and b"holds 2 certificates" in r.stderr
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(tls.cert.read_bytes().split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n")  # fmt: skip
    r = airgap("elastic-truststore", "--ca", str(leaf), "--print-docker")
    assert r.returncode == 2 and b"not a CA certificate" in r.stderr
    r = airgap(
        "elastic-truststore", "--ca", str(tls.ca_cert), "--es-home", str(tmp_path),
        "--es-path-conf", str(tmp_path),
    )  # fmt: skip
    assert r.returncode == 2 and b"no keytool" in r.stderr and b"Traceback" not in r.stderr
    # the default CA is the install's; the node is recorded for `airgap status`
    prefix = tmp_path / "opt"
    shutil.copytree(tls.ca_cert.parent, prefix / "secrets" / "tls")
    (prefix / "state").mkdir()
    r = airgap("elastic-truststore", "--prefix", str(prefix), "--write-script", str(tmp_path / "s.sh"))  # fmt: skip
    assert r.returncode == 0 and tls.ca_cert.read_text() in (tmp_path / "s.sh").read_text()
    home, conf = fake_node(tmp_path / "node")
    args = ("--prefix", str(prefix), "--es-home", str(home), "--es-path-conf", str(conf), "--json")
    (conf / STORE).mkdir()
    r = airgap("elastic-truststore", *args)
    assert r.returncode == 2 and b"is a directory" in r.stderr and b"hint:" in r.stderr
    (conf / STORE).rmdir()
    r = airgap("elastic-truststore", *args)
    assert r.returncode == 0, r.stderr.decode()
    doc = json.loads(r.stdout)
    assert doc["action"] == "created" and "rolling restart" in doc["next"]
    assert doc["recorded"] == str(prefix / "state/es-truststores.json")
    assert json.loads(airgap("elastic-truststore", *args).stdout)["action"] == "unchanged"


def test_install_writes_the_script_and_status_watches_the_node(
    tmp_path: Path, key: Keys, docker_engine: services.Service
) -> None:
    """A real install: its es-truststore.sh, run under dash, makes a JVM trust the real
    Nginx serving the endpoint; `airgap elastic-truststore` records the node, `airgap
    status` fails once the node's cacerts changes and passes after a rerun; uninstall
    leaves nothing."""
    manifest = make_demo_sources(tmp_path / "src", real_images=True)
    build_bundle(manifest, tmp_path / "b.tar", key)
    prefix, port = tmp_path / "opt", services.free_port()
    host = ("--prefix", str(prefix), "--runtime-url", docker_engine.url)
    r = airgap(
        "install", str(tmp_path / "b.tar"), "--trusted-key", str(key.public), *host,
        "--no-gpu", "--port", str(port), "--internal-port", str(services.free_port()),
        "--artifacts-port", "0", "--ip", "127.0.0.1", "--health-timeout", "60",
    )  # fmt: skip
    try:
        assert r.returncode == 0, r.stderr.decode()
        script = prefix / "elastic" / "es-truststore.sh"
        ca = prefix / "secrets" / "tls" / "ca.crt"
        assert stat.S_IMODE(script.stat().st_mode) == 0o755
        assert ca.read_text() in script.read_text()
        home, conf = fake_node(tmp_path / "node-sh")
        sh = subprocess.run(
            ["dash", str(script), "--es-home", str(home), "--es-path-conf", str(conf)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert sh.returncode == 0, sh.stdout + sh.stderr
        health = f"https://127.0.0.1:{port}/health"
        trusted = probe(health, conf / OPTIONS)
        assert trusted.stdout.startswith("TRUSTED 200"), trusted.stdout + trusted.stderr
        home, conf = fake_node(tmp_path / "node-py")
        r = airgap("elastic-truststore", "--prefix", str(prefix), "--es-home", str(home),
                   "--es-path-conf", str(conf))  # fmt: skip
        assert r.returncode == 0 and b"rolling restart" in r.stdout, r.stderr.decode()
        status = airgap("status", *host, "--json")
        assert status.returncode == 0, status.stdout.decode() + status.stderr.decode()
        [node] = json.loads(status.stdout)["es_truststores"]
        assert node["state"] == "current" and node["es_path_conf"] == str(conf)
        cacerts = home / "jdk/lib/security/cacerts"
        (tmp_path / "pw").write_text("changeit\n")
        gone = sorted(entries(cacerts, None))[0]
        keytool("-delete", "-alias", gone, "-keystore", str(cacerts), "-storepass:file", str(tmp_path / "pw"))  # fmt: skip
        stale = airgap("status", *host)
        assert stale.returncode == 1 and b"stale" in stale.stdout, stale.stdout.decode()
        r = airgap("elastic-truststore", "--prefix", str(prefix), "--es-home", str(home),
                   "--es-path-conf", str(conf))  # fmt: skip
        assert r.returncode == 0 and b"updated" in r.stdout, r.stderr.decode()
        assert airgap("status", *host).returncode == 0
    finally:
        gone_all = airgap("uninstall", *host)
    assert gone_all.returncode == 0, gone_all.stderr.decode()
    assert not prefix.exists()


def test_a_site_pki_certificate_needs_no_trust_step(tls: TlsFiles, tmp_path: Path) -> None:
    """Served with --tls-cert from the site's PKI: no script, and no guessed default CA."""
    prefix = tmp_path / "opt"
    layout = Layout(prefix)
    layout.es_truststore_script.parent.mkdir(parents=True)
    layout.es_truststore_script.write_text("an older script for a CA made here\n")
    site_cert = tmp_path / "site.pem"
    site_cert.write_bytes(tls.cert.read_bytes())
    served = ServeRecord(
        url="https://llm.example.internal:8443/v1/chat/completions",
        ca_cert=str(site_cert),
        port=8443,
        model="tiny",
        options=ServedWith(tls_cert=site_cert, tls_key=tmp_path / "site.key"),
    )
    assert write_install_script(layout, served) is None
    assert not layout.es_truststore_script.exists()  # the older one is gone too
    release = Release(
        name="demo", version=1, index_sha256="a" * 64, signers=["k" * 64],
        installed_at="2026-01-01T00:00:00Z", path=str(layout.release("demo-1")),
        target=EngineSpec(url="unix:///x.sock"), images=[], serve=served,
    )  # fmt: skip
    ReceiptFile.load(layout.state).save(
        Receipt().with_release("demo-1", release).activated("demo-1")
    )
    shutil.copytree(tls.ca_cert.parent, layout.tls_dir)  # even with a CA of ours still there
    r = airgap("elastic-truststore", "--prefix", str(prefix), "--print-docker")
    assert r.returncode == 2 and b"site's own PKI" in r.stderr and b"--ca" in r.stderr
    # a CA made here: the install's script, with that CA inlined
    ours = served.model_copy(update={"ca_cert": str(layout.tls_dir / "ca.crt"), "options": None})
    script = write_install_script(layout, ours)
    assert script == layout.es_truststore_script
    assert tls.ca_cert.read_text() in script.read_text()
