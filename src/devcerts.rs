//! `bindgate dev-certs DIR`: a development CA, a server certificate for `localhost` and
//! `127.0.0.1`, two client certificates issued by the CA and one self-signed client certificate,
//! plus random development tokens for the shipped `proxy.yaml`. For development only.

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509Name, X509NameBuilder, X509};
use std::fs;
use std::path::{Path, PathBuf};

/// The files `dev-certs` writes, relative to its directory.
pub const FILES: &[&str] = &[
    "ca.crt",
    "ca.key",
    "server.crt",
    "server.key",
    "client1.crt",
    "client1.key",
    "client2.crt",
    "client2.key",
    "selfsigned.crt",
    "selfsigned.key",
    "master.token",
    "session-store.token",
    "signing.key",
    "jwks.json",
];

use crate::devtoken::{err, DevError};

type Result<T> = std::result::Result<T, DevError>;

fn ec_key() -> Result<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(err("EC group"))?;
    let key = EcKey::generate(&group).map_err(err("EC key"))?;
    PKey::from_ec_key(key).map_err(err("EC key"))
}

fn name(cn: &str) -> Result<X509Name> {
    let mut b = X509NameBuilder::new().map_err(err("name"))?;
    b.append_entry_by_nid(Nid::ORGANIZATIONNAME, "bindgate development")
        .map_err(err("name"))?;
    b.append_entry_by_nid(Nid::COMMONNAME, cn)
        .map_err(err("name"))?;
    Ok(b.build())
}

enum Kind<'a> {
    Ca,
    Server(&'a [&'a str]),
    Client,
}

fn certificate(
    cn: &str,
    key: &PKey<Private>,
    kind: Kind<'_>,
    issuer: Option<(&X509, &PKey<Private>)>,
) -> Result<X509> {
    let mut b = X509Builder::new().map_err(err("certificate"))?;
    b.set_version(2).map_err(err("version"))?;
    let mut serial = BigNum::new().map_err(err("serial"))?;
    serial
        .rand(127, MsbOption::MAYBE_ZERO, false)
        .map_err(err("serial"))?;
    let serial = serial.to_asn1_integer().map_err(err("serial"))?;
    b.set_serial_number(&serial).map_err(err("serial"))?;
    let subject = name(cn)?;
    b.set_subject_name(&subject).map_err(err("subject"))?;
    match issuer {
        Some((ca, _)) => b.set_issuer_name(ca.subject_name()),
        None => b.set_issuer_name(&subject),
    }
    .map_err(err("issuer"))?;
    b.set_pubkey(key).map_err(err("public key"))?;
    let not_before = Asn1Time::days_from_now(0).map_err(err("time"))?;
    let not_after = Asn1Time::days_from_now(825).map_err(err("time"))?;
    b.set_not_before(&not_before).map_err(err("time"))?;
    b.set_not_after(&not_after).map_err(err("time"))?;

    let ctx_issuer = issuer.map(|(ca, _)| ca.as_ref());
    match kind {
        Kind::Ca => {
            b.append_extension(
                BasicConstraints::new()
                    .critical()
                    .ca()
                    .build()
                    .map_err(err("ext"))?,
            )
            .map_err(err("ext"))?;
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .map_err(err("ext"))?,
            )
            .map_err(err("ext"))?;
        }
        Kind::Server(_) | Kind::Client => {
            let server = matches!(kind, Kind::Server(_));
            b.append_extension(BasicConstraints::new().build().map_err(err("ext"))?)
                .map_err(err("ext"))?;
            let mut usage = KeyUsage::new();
            usage.critical().digital_signature();
            if server {
                usage.key_agreement();
            }
            b.append_extension(usage.build().map_err(err("ext"))?)
                .map_err(err("ext"))?;
            let mut extended = ExtendedKeyUsage::new();
            if server {
                extended.server_auth();
            } else {
                extended.client_auth();
            }
            b.append_extension(extended.build().map_err(err("ext"))?)
                .map_err(err("ext"))?;
            if let Kind::Server(names) = kind {
                let mut san = SubjectAlternativeName::new();
                for n in names {
                    if n.parse::<std::net::IpAddr>().is_ok() {
                        san.ip(n);
                    } else {
                        san.dns(n);
                    }
                }
                let ext = san
                    .build(&b.x509v3_context(ctx_issuer, None))
                    .map_err(err("SAN"))?;
                b.append_extension(ext).map_err(err("ext"))?;
            }
        }
    }
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(ctx_issuer, None))
        .map_err(err("SKI"))?;
    b.append_extension(ski).map_err(err("ext"))?;
    if issuer.is_some() {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(ctx_issuer, None))
            .map_err(err("AKI"))?;
        b.append_extension(aki).map_err(err("ext"))?;
    }
    let signer = issuer.map(|(_, k)| k).unwrap_or(key);
    b.sign(signer, MessageDigest::sha256())
        .map_err(err("sign"))?;
    Ok(b.build())
}

/// Writes a private key readable by its owner only.
pub fn write_private(path: &Path, content: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file = path
        .file_name()
        .and_then(|f| f.to_str())
        .ok_or_else(|| DevError::NotAFileName(path.to_path_buf()))?;
    write(dir, file, content, true)
}

fn write(dir: &Path, file: &str, content: &[u8], secret: bool) -> Result<()> {
    let path = dir.join(file);
    fs::write(&path, content).map_err(DevError::file("write", &path))?;
    if secret {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(DevError::file("restrict", &path))?;
    }
    Ok(())
}

fn write_pair(dir: &Path, stem: &str, cert: &X509, key: &PKey<Private>) -> Result<()> {
    write(
        dir,
        &format!("{stem}.crt"),
        &cert.to_pem().map_err(err("PEM"))?,
        false,
    )?;
    let key_pem = key.private_key_to_pem_pkcs8().map_err(err("PEM"))?;
    write(dir, &format!("{stem}.key"), &key_pem, true)
}

/// Whether every development file is already in `dir`.
pub fn complete(dir: &Path) -> bool {
    FILES.iter().all(|f| dir.join(f).is_file())
}

/// Writes the development set into `dir`. Returns the files written.
pub fn generate(dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).map_err(DevError::file("create", dir))?;
    let ca_key = ec_key()?;
    let ca = certificate("bindgate development CA", &ca_key, Kind::Ca, None)?;
    write_pair(dir, "ca", &ca, &ca_key)?;

    let server_key = ec_key()?;
    let server = certificate(
        "localhost",
        &server_key,
        Kind::Server(&["localhost", "127.0.0.1", "::1"]),
        Some((&ca, &ca_key)),
    )?;
    write_pair(dir, "server", &server, &server_key)?;

    for stem in ["client1", "client2"] {
        let key = ec_key()?;
        let cert = certificate(stem, &key, Kind::Client, Some((&ca, &ca_key)))?;
        write_pair(dir, stem, &cert, &key)?;
    }
    let key = ec_key()?;
    let cert = certificate("selfsigned client", &key, Kind::Client, None)?;
    write_pair(dir, "selfsigned", &cert, &key)?;

    // The development token signing key and its public key set (what `dev-token` signs with and
    // the shipped proxy.yaml trusts).
    let signing = ec_key()?;
    let key_pem = signing.private_key_to_pem_pkcs8().map_err(err("PEM"))?;
    write(dir, "signing.key", &key_pem, true)?;
    let jwks = serde_json::json!({ "keys": [crate::devtoken::public_jwk(&signing)?] });
    write(dir, "jwks.json", format!("{jwks:#}\n").as_bytes(), false)?;

    write(
        dir,
        "master.token",
        format!("{}\n", crate::devtoken::random_token()?).as_bytes(),
        true,
    )?;
    write(
        dir,
        "session-store.token",
        format!("{}\n", crate::devtoken::random_token()?).as_bytes(),
        true,
    )?;
    Ok(FILES.iter().map(|f| dir.join(f)).collect())
}
