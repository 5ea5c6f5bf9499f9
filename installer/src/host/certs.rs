//! Host files layer: the certificates a join or a renewal brings, checked against the host's
//! keys, and written with the keystores (PKCS#12 keystore, its password file, truststore) and
//! `node.yaml`.
//!
//! Depends only on `layout`, `owner`, `state`, `exit`, `muster-protocol` and `host::keys`.

use super::keys::Key;
use crate::exit::{Exit, Failure, Result};
use crate::layout::{self, File};
use crate::owner::Owners;
use crate::state::{NodeConfig, TlsPaths};
use base64::Engine;
use muster_protocol::fs::write_atomic;
use muster_protocol::node::Bundle;
use std::path::Path;
use zeroize::Zeroizing;

/// Checks that the bundle's certificates are for our keys and chain to the CAs it names.
pub fn check_bundle(b: &Bundle, tkey: &Key, hkey: &Key) -> Result<()> {
    check_certs(
        &Certs {
            transport_ca_pem: &b.transport_ca_pem,
            http_ca_pem: &b.http_ca_pem,
            transport_cert_pem: &b.transport_cert_pem,
            http_cert_pem: &b.http_cert_pem,
        },
        tkey,
        hkey,
    )
}

/// Each certificate is for its key and signed by its CA.
pub fn check_certs(b: &Certs, tkey: &Key, hkey: &Key) -> Result<()> {
    let check = |pem: &str, ca_pem: &str, key: &Key, what: &str| -> Result<()> {
        let bad = |why: &str| {
            Failure::new(
                Exit::Other,
                format!("the coordinator's {what} certificate is unusable: {why}"),
            )
        };
        let (_, leaf) =
            x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| bad("not PEM"))?;
        let (_, ca) =
            x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).map_err(|_| bad("CA not PEM"))?;
        let leaf = leaf.parse_x509().map_err(|_| bad("not X.509"))?;
        let ca = ca.parse_x509().map_err(|_| bad("CA not X.509"))?;
        if leaf.public_key().raw != key.pair.public_key_der().as_slice() {
            return Err(bad("it is not for this host's key"));
        }
        leaf.verify_signature(Some(ca.public_key()))
            .map_err(|_| bad("it is not signed by the platform's CA"))?;
        Ok(())
    };
    check(b.transport_cert_pem, b.transport_ca_pem, tkey, "transport")?;
    check(b.http_cert_pem, b.http_ca_pem, hkey, "HTTP")
}

fn pem_der(pem: &str) -> Result<Vec<u8>> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map(|(_, p)| p.contents)
        .map_err(|_| Failure::new(Exit::Other, "a certificate in the bundle is not PEM"))
}

/// Writes everything the bundle brings, with `coordinators` (where this host finds them) in
/// `node.yaml`. Returns the paths written.
pub fn write_bundle(
    root: &Path,
    o: &Owners,
    b: &Bundle,
    tkey: &Key,
    zone: &str,
    coordinators: &[String],
) -> Result<Vec<String>> {
    let certs = Certs {
        transport_ca_pem: &b.transport_ca_pem,
        http_ca_pem: &b.http_ca_pem,
        transport_cert_pem: &b.transport_cert_pem,
        http_cert_pem: &b.http_cert_pem,
    };
    let mut files = write_certs(root, o, &certs, tkey)?;
    let node = NodeConfig {
        version: 1,
        node_id: b.node_id.clone(),
        roles: b.roles.clone(),
        pending_roles: b.pending_roles.clone(),
        zone: zone.to_string(),
        coordinators: coordinators.to_vec(),
        tls: TlsPaths {
            transport_ca: format!("/{}", File::TransportCa.rel()),
            http_ca: format!("/{}", File::HttpCa.rel()),
            cert: format!("/{}", File::NodeCert.rel()),
            key: format!("/{}", File::NodeKey.rel()),
            http_cert: format!("/{}", File::HttpCert.rel()),
            http_key: format!("/{}", File::HttpKey.rel()),
            keystore: format!("/{}", File::Keystore.rel()),
            keystore_password_file: format!("/{}", File::KeystorePassword.rel()),
            truststore: format!("/{}", File::Truststore.rel()),
        },
    };
    write_node_yaml(root, o, &node)?;
    files.push(File::NodeYaml.path(root).display().to_string());
    Ok(files)
}

/// Writes `/etc/muster/node.yaml`.
pub fn write_node_yaml(root: &Path, o: &Owners, node: &NodeConfig) -> Result<()> {
    let yaml =
        serde_norway::to_string(node).map_err(|e| Failure::new(Exit::Other, e.to_string()))?;
    let yaml = format!("# Written by muster install; muster leave removes it.\n{yaml}");
    let f = File::NodeYaml;
    write_atomic(&f.path(root), yaml.as_bytes(), f.perms(o))?;
    Ok(())
}

/// The certificates a join or a renewal brings.
pub struct Certs<'a> {
    pub transport_ca_pem: &'a str,
    pub http_ca_pem: &'a str,
    pub transport_cert_pem: &'a str,
    pub http_cert_pem: &'a str,
}

/// Writes the CA certificates, the node certificates (leaf then CA) and the keystores built
/// from them and the transport key. Returns the paths written.
pub fn write_certs(root: &Path, o: &Owners, b: &Certs, tkey: &Key) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for (f, content) in [
        (File::TransportCa, b.transport_ca_pem.to_string()),
        (File::HttpCa, b.http_ca_pem.to_string()),
        (
            File::NodeCert,
            format!("{}{}", b.transport_cert_pem, b.transport_ca_pem),
        ),
        (
            File::HttpCert,
            format!("{}{}", b.http_cert_pem, b.http_ca_pem),
        ),
    ] {
        write_atomic(&f.path(root), content.as_bytes(), f.perms(o))?;
        files.push(f.path(root).display().to_string());
    }
    files.extend(write_keystores(root, o, b, tkey)?);
    Ok(files)
}

/// PBKDF iterations for the PKCS#12 stores: OpenSSL's long-standing default. The keystore's
/// password is 192 random bits, so stretching it further protects nothing (no one can guess it
/// however cheap a guess is), and the truststore's is public. The crate's default of 10,000 cost
/// every enrollment 12–15 ms (one took 35–50 ms on loopback then, about 20 now).
const P12_ITERATIONS: u64 = 2048;

/// The keystore password already on the host, if it is one Muster wrote (32 characters of
/// URL-safe base64).
fn kept_keystore_password(root: &Path, o: &Owners) -> Option<Zeroizing<String>> {
    let bytes = Zeroizing::new(layout::read_written(root, File::KeystorePassword, o).ok()??);
    let p = Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned());
    let ok = p.len() == 32
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| Zeroizing::new(p.to_string()))
}

/// The PKCS#12 keystore (transport key and chain), its password file, and the truststore.
fn write_keystores(root: &Path, o: &Owners, b: &Certs, tkey: &Key) -> Result<Vec<String>> {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKeyChain};
    let bad = |e: p12_keystore::error::Error| {
        Failure::new(Exit::Other, format!("building a PKCS#12 store: {e}"))
    };
    // A renewal or a new enrollment keeps the keystore's password, so a program holding it
    // opens the new keystore too, and the two files never disagree while they are rewritten.
    let password = match kept_keystore_password(root, o) {
        Some(p) => p,
        None => {
            let mut b = [0u8; 24];
            rand::Rng::fill(&mut rand::thread_rng(), &mut b);
            Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
        }
    };
    let leaf = Certificate::from_der(&pem_der(b.transport_cert_pem)?).map_err(bad)?;
    let ca = Certificate::from_der(&pem_der(b.transport_ca_pem)?).map_err(bad)?;
    let http_ca = Certificate::from_der(&pem_der(b.http_ca_pem)?).map_err(bad)?;
    let key_der = Zeroizing::new(tkey.pair.serialize_der());
    let mut ks = KeyStore::new();
    let local_id: [u8; 20] = rand::random();
    ks.add_entry(
        "node",
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(
            &key_der[..],
            local_id,
            vec![leaf, ca.clone()],
        )),
    );
    let write = |store: &KeyStore, password: &str| {
        store
            .writer(password)
            .encryption_iterations(P12_ITERATIONS)
            .mac_iterations(P12_ITERATIONS)
            .write()
            .map_err(bad)
    };
    let p12 = Zeroizing::new(write(&ks, &password)?);
    let mut ts = KeyStore::new();
    ts.add_entry("transport-ca", KeyStoreEntry::Certificate(ca));
    ts.add_entry("http-ca", KeyStoreEntry::Certificate(http_ca));
    // A truststore holds only public certificates; its password is a well-known one, as Java's
    // `changeit`, so any tool can open it.
    let trust = write(&ts, "changeit")?;
    let mut out = Vec::new();
    for (f, content) in [
        (File::KeystorePassword, password.as_bytes()),
        (File::Keystore, &p12[..]),
        (File::Truststore, &trust[..]),
    ] {
        write_atomic(&f.path(root), content, f.perms(o))?;
        out.push(f.path(root).display().to_string());
    }
    Ok(out)
}
