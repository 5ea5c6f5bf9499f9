#!/usr/bin/env python3
"""End-to-end check of the step-ca recipe used by the enrollment benchmark.

Needs: python3 (3.9+) and the `cryptography` package (pip install cryptography);
everything else is the standard library. Needs the binary from
bench/stepca/build.sh (default: target/stepca/step-ca) and `taskset` when
--cpu is given.

What it does, in a fresh temporary directory:
  1. makes a P-256 root CA and a P-256 intermediate CA (plain, unencrypted
     PEM keys: step-ca then asks for no password), and a P-256 key for a JWK
     provisioner;
  2. writes ca.json (badger database by default, or --db memory for the
     in-memory token store) listening on 127.0.0.1:<free port>;
  3. starts step-ca, mints a one-time token (ES256 JWT) signed by the
     provisioner key, POSTs {"csr", "ott"} to /1.0/sign and checks the
     certificate chains to the root with the expected names;
  4. replays the same token and prints the refusal (status and body);
  5. probes which token claims step-ca checks (--probes);
  6. signs --count certificates sequentially, one new TLS connection each
     (full handshake, no resumption), and reports step-ca's CPU time per
     signing from /proc/PID/stat (utime + stime).

Examples:
  python3 bench/stepca/proof.py
  python3 bench/stepca/proof.py --db memory --count 300 --cpu 1 --probes
"""

import argparse
import base64
import datetime
import hashlib
import http.client
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROVISIONER = "muster-bench"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pem_cert(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_key(key) -> bytes:
    # SEC1 "EC PRIVATE KEY", unencrypted (PKCS#8 "PRIVATE KEY" works too).
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def make_ca(workdir: str):
    """Root + intermediate, the same shape `step ca init` makes."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ten_years = datetime.timedelta(days=3650)

    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Muster Bench Root CA")])
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + ten_years)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )

    int_key = ec.generate_private_key(ec.SECP256R1())
    int_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Muster Bench Intermediate CA")])
    inter = (
        x509.CertificateBuilder()
        .subject_name(int_name)
        .issuer_name(root_name)
        .public_key(int_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + ten_years)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(int_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )

    paths = {
        "root": os.path.join(workdir, "certs", "root_ca.crt"),
        "crt": os.path.join(workdir, "certs", "intermediate_ca.crt"),
        "key": os.path.join(workdir, "secrets", "intermediate_ca_key"),
        "root_key": os.path.join(workdir, "secrets", "root_ca_key"),
    }
    for d in ("certs", "secrets"):
        os.makedirs(os.path.join(workdir, d), exist_ok=True)
    with open(paths["root"], "wb") as f:
        f.write(pem_cert(root))
    with open(paths["crt"], "wb") as f:
        f.write(pem_cert(inter))
    for name, key in (("key", int_key), ("root_key", root_key)):
        with open(paths[name], "wb") as f:
            f.write(pem_key(key))
        os.chmod(paths[name], 0o600)
    return root, inter, paths


def make_provisioner_key():
    """P-256 key; the public JWK for ca.json, kid = RFC 7638 thumbprint."""
    key = ec.generate_private_key(ec.SECP256R1())
    nums = key.public_key().public_numbers()
    x = b64u(nums.x.to_bytes(32, "big"))
    y = b64u(nums.y.to_bytes(32, "big"))
    # Thumbprint input: required members only, lexicographic order, no spaces.
    thumb_input = json.dumps({"crv": "P-256", "kty": "EC", "x": x, "y": y}, separators=(",", ":"))
    kid = b64u(hashlib.sha256(thumb_input.encode()).digest())
    jwk = {"use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256", "x": x, "y": y}
    return key, jwk


def write_ca_json(workdir, paths, port, jwk, db_kind):
    cfg = {
        "root": paths["root"],
        "federatedRoots": None,
        "crt": paths["crt"],
        "key": paths["key"],
        "address": f"127.0.0.1:{port}",
        "insecureAddress": "",
        "dnsNames": ["127.0.0.1"],
        "logger": {"format": "text"},
        "authority": {
            "provisioners": [{"type": "JWK", "name": PROVISIONER, "key": jwk}],
        },
        "tls": {
            "cipherSuites": [
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            ],
            "minVersion": 1.2,
            "maxVersion": 1.3,
            "renegotiation": False,
        },
    }
    if db_kind == "badger":
        # What `step ca init` writes: badger (v2) in <STEPPATH>/db.
        cfg["db"] = {"type": "badgerv2", "dataSource": os.path.join(workdir, "db")}
    # No "db" key at all: step-ca keeps used tokens in memory (lost on restart).
    path = os.path.join(workdir, "config", "ca.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    return path, cfg


def mint_token(key, kid, claims, header_extra=None, header_drop=()):
    header = {"alg": "ES256", "kid": kid, "typ": "JWT"}
    header.update(header_extra or {})
    for k in header_drop:
        header.pop(k, None)
    signing_input = (
        b64u(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64u(json.dumps(claims, separators=(",", ":")).encode())
    )
    der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return signing_input + "." + b64u(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def std_claims(port, sub, sans=None, root_fp=None, now=None, lifetime=300):
    now = int(now if now is not None else time.time())
    claims = {
        "aud": f"https://127.0.0.1:{port}/1.0/sign",
        "exp": now + lifetime,
        "iat": now,
        "iss": PROVISIONER,
        "jti": secrets.token_hex(32),
        "nbf": now,
        "sans": [sub] if sans is None else sans,
        "sub": sub,
    }
    if root_fp:
        claims["sha"] = root_fp  # what the step CLI adds; step-ca does not check it
    return claims


def make_csr(cn, dns=None, key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]) if cn else x509.Name([])
    )
    dns = [cn] if dns is None else dns
    if dns:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


class Client:
    """One new TLS connection per request: full handshake, no resumption."""

    def __init__(self, port, root_path):
        self.port = port
        self.ctx = ssl.create_default_context(cafile=root_path)

    def request(self, method, path, body=None):
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=30)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            out = resp.read()
            info = {
                "peercert": conn.sock.getpeercert(),
                "version": conn.sock.version(),
                "cipher": conn.sock.cipher()[0],
                "has_ticket": bool(conn.sock.session and conn.sock.session.has_ticket),
            }
            return resp.status, out, info
        finally:
            conn.close()

    def sign(self, csr, ott):
        return self.request("POST", "/1.0/sign", {"csr": csr, "ott": ott})


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step-ca", default=os.path.join(REPO, "target", "stepca", "step-ca"))
    ap.add_argument("--db", choices=("badger", "memory"), default="badger")
    ap.add_argument("--count", type=int, default=300, help="signings for the CPU figure (0: skip)")
    ap.add_argument("--cpu", type=int, default=1, help="core to pin step-ca to (-1: no pinning)")
    ap.add_argument("--client-cpu", type=int, default=0, help="core for this script (-1: any)")
    ap.add_argument("--probes", action="store_true", help="also probe which claims are checked")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    if not os.access(args.step_ca, os.X_OK):
        sys.exit(f"{args.step_ca} missing: run bench/stepca/build.sh first")
    if args.client_cpu >= 0:
        os.sched_setaffinity(0, {args.client_cpu})

    workdir = tempfile.mkdtemp(prefix="stepca-proof-")
    proc = None
    try:
        root, inter, paths = make_ca(workdir)
        root_fp = root.fingerprint(hashes.SHA256()).hex()
        prov_key, jwk = make_provisioner_key()
        port = free_port()
        ca_json, cfg = write_ca_json(workdir, paths, port, jwk, args.db)
        print(f"work dir: {workdir}\nca.json:\n{json.dumps(cfg, indent=2)}")

        cmd = [args.step_ca, ca_json]
        if args.cpu >= 0:
            cmd = ["taskset", "-c", str(args.cpu)] + cmd
        env = dict(os.environ, STEPPATH=os.path.join(workdir, "step"), HOME=workdir)
        log = open(os.path.join(workdir, "step-ca.log"), "wb")
        print("start:", " ".join(cmd), " (env STEPPATH=<work dir>/step)")
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)

        client = Client(port, paths["root"])
        while True:
            if proc.poll() is not None:
                log.flush()
                sys.exit("step-ca exited:\n" + open(log.name).read())
            try:
                status, body, tls = client.request("GET", "/health")
                if status == 200:
                    break
            except OSError:
                pass
            if time.time() - t0 > 30:
                sys.exit("step-ca did not come up in 30 s")
            time.sleep(0.05)
        print(f"up in {time.time() - t0:.2f} s; /health -> {body.decode().strip()}")
        print(
            f"TLS: {tls['version']} {tls['cipher']}; server cert subject "
            f"{tls['peercert']['subject']}, SAN {tls['peercert'].get('subjectAltName')}; "
            f"session ticket received: {tls['has_ticket']}"
        )
        # iat must not be before the CA started (DisableIssuedAtCheck is false):
        # mint tokens only after step-ca is up.
        time.sleep(1.1)

        # --- 1. a signing -----------------------------------------------
        sub = "host-0001.muster.test"
        claims = std_claims(port, sub, root_fp=root_fp)
        ott = mint_token(prov_key, jwk["kid"], claims)
        csr = make_csr(sub)
        status, body, _ = client.sign(csr, ott)
        print(f"\nPOST /1.0/sign -> {status}")
        if status != 201:
            sys.exit(body.decode())
        resp = json.loads(body)
        leaf = x509.load_pem_x509_certificate(resp["crt"].encode())
        assert leaf.issuer == inter.subject, "leaf not issued by the intermediate"
        inter.public_key().verify(
            leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm)
        )
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        print(
            f"certificate: subject {leaf.subject.rfc4514_string()}, SAN "
            f"{san.get_values_for_type(x509.DNSName)}, valid "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} .. {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, "
            f"chain length {len(resp['certChain'])}, response keys {sorted(resp)}"
        )

        # --- 2. replay ----------------------------------------------------
        status, body, _ = client.sign(make_csr(sub), ott)
        print(f"\nreplay of the same token -> {status} {body.decode().strip()}")
        assert status == 401, "replay was not refused"

        # --- 3. probes ----------------------------------------------------
        if args.probes:
            print("\nprobes (each with a fresh jti unless stated):")

            def probe(label, claims, csr_cn=sub, csr_dns=None, **hdr):
                tok = mint_token(prov_key, jwk["kid"] if "kid" not in hdr else hdr.pop("kid"), claims, **hdr)
                st, b, _ = client.sign(make_csr(csr_cn, csr_dns), tok)
                msg = "" if st == 201 else " " + b.decode().strip()
                print(f"  {label:58s} -> {st}{msg}")

            n = lambda: std_claims(port, sub)  # noqa: E731
            c = n(); c["aud"] = "https://127.0.0.1/1.0/sign"
            probe("aud without port", c)
            c = n(); c["aud"] = f"https://127.0.0.1:{port}/sign"
            probe("aud .../sign (no /1.0)", c)
            c = n(); c["aud"] = [f"https://127.0.0.1:{port}/1.0/sign"]
            probe("aud as a one-element list", c)
            c = n(); c["aud"] = "step-certificate-authority"
            probe("aud 'step-certificate-authority' (legacy)", c)
            c = n(); c["aud"] = f"https://localhost:{port}/1.0/sign"
            probe("aud with host not in dnsNames (localhost)", c)
            c = n(); c["aud"] = f"https://127.0.0.1:{port}/1.0/renew"
            probe("aud .../1.0/renew", c)
            c = n(); c["iss"] = "other"
            probe("iss not the provisioner name", c)
            probe("kid not the provisioner's kid", n(), kid="nope")
            probe("no typ header", n(), header_drop=("typ",))
            c = n(); del c["jti"]
            probe("no jti (reuse key = sha256 of token)", c)
            c = n(); c["jti"] = claims["jti"]
            probe("new token re-using the first token's jti", c)
            c = n()
            for k in ("exp", "nbf", "iat"):
                del c[k]
            probe("no exp, nbf, iat", c)
            c = n(); del c["sub"]
            probe("no sub", c)
            probe("CSR CN differs from sub", n(), csr_cn="other.muster.test", csr_dns=[sub])
            probe("CSR without CN (SAN only)", n(), csr_cn="", csr_dns=[sub])
            probe("CSR SAN not in sans", n(), csr_dns=["other.muster.test"])
            probe("CSR without SANs", n(), csr_dns=[])
            c = n(); del c["sans"]
            probe("no sans claim (sans := [sub])", c)
            c = n(); c["sans"] = [sub, "alias.muster.test"]
            probe("sans has a name the CSR lacks", c)
            c = n(); c["exp"] = c["iat"] - 120
            probe("exp 2 minutes ago (iat now)", c)
            c = n(); c["exp"] = c["iat"] - 30
            probe("exp 30 s ago (within 1 min leeway)", c)
            c = n(); c["exp"] = c["iat"] + 3600 * 24 * 365
            probe("exp a year ahead", c)
            c = n(); c["nbf"] = c["iat"] + 120
            probe("nbf 2 minutes in the future", c)
            c = n(); c["nbf"] = c["iat"] + 50
            probe("nbf 50 s in the future (within 1 min leeway)", c)
            c = n(); c["iat"] += 120; del c["nbf"]
            probe("iat 2 minutes in the future", c)
            c = n(); c["iat"] = int(t0) - 60
            probe("iat before step-ca started", c)
            c = n(); del c["jti"]
            tok = mint_token(prov_key, jwk["kid"], c)
            st1 = client.sign(make_csr(sub), tok)[0]
            st2, b, _ = client.sign(make_csr(sub), tok)
            print(f"  {'token without jti, used twice':58s} -> {st1}, then {st2} {b.decode().strip()}")

        # --- 4. CPU per signing ------------------------------------------
        if args.count > 0:
            items = []
            for i in range(args.count):
                s = f"host-{i:05d}.cpu.muster.test"
                items.append((make_csr(s), mint_token(prov_key, jwk["kid"], std_claims(port, s))))
            cpu0 = proc_cpu_seconds(proc.pid)
            w0 = time.perf_counter()
            for csr, ott in items:
                status, body, _ = client.sign(csr, ott)
                if status != 201:
                    sys.exit(f"signing failed: {status} {body.decode()}")
            wall = time.perf_counter() - w0
            cpu = proc_cpu_seconds(proc.pid) - cpu0
            print(
                f"\n{args.count} signings, db={args.db}, step-ca on core {args.cpu}: "
                f"step-ca CPU {cpu:.2f} s = {cpu / args.count * 1000:.2f} ms per signing; "
                f"wall {wall:.2f} s = {wall / args.count * 1000:.2f} ms per signing "
                f"(client included)"
            )
            if args.db == "badger":
                size = sum(
                    os.path.getsize(os.path.join(dp, f))
                    for dp, _, fs in os.walk(os.path.join(workdir, "db"))
                    for f in fs
                )
                print(f"badger db size: {size} bytes")
    finally:
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
