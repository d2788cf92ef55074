//! Host identities without a CA: each host has a key pair and a self-signed
//! certificate, named by a fingerprint of its public key. Clients pin servers
//! in a known-hosts file; servers admit clients listed by fingerprint.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use thiserror::Error;

/// Prefix of printed fingerprints, so they are recognisable in configs.
const FINGERPRINT_PREFIX: &str = "xfer:";

/// A host's identity: BLAKE3 of its certificate's SubjectPublicKeyInfo.
///
/// Printed as `xfer:` and 52 lowercase base32 characters; the key, not the
/// certificate, is what it names, so a re-issued certificate keeps it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

/// What went wrong with an identity, a fingerprint or a trust file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading or writing an identity or trust file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The key pair or certificate could not be generated or parsed.
    #[error("{path}: invalid key or certificate ({reason}); move it away to create a new identity")]
    BadIdentity {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Key generation failed.
    #[error("cannot generate a key pair: {0}")]
    Generate(#[from] rcgen::Error),
    /// A certificate from a peer could not be parsed.
    #[error("peer certificate is not valid X.509")]
    BadCertificate,
    /// Text that should be a fingerprint is not one.
    #[error("{0:?} is not a fingerprint (expected xfer: and 52 base32 characters, as `xfer id` prints)")]
    BadFingerprint(String),
    /// A line of a trust file does not parse.
    #[error("{path}:{line}: {reason}")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io { path: path.to_path_buf(), source }
}

impl Fingerprint {
    /// The fingerprint of a DER-encoded X.509 certificate's public key.
    ///
    /// # Errors
    /// [`IdentityError::BadCertificate`] if `cert` does not parse.
    pub fn of_certificate(cert: &CertificateDer<'_>) -> Result<Fingerprint, IdentityError> {
        let parsed = webpki::EndEntityCert::try_from(cert).map_err(|_| IdentityError::BadCertificate)?;
        Ok(Fingerprint(*blake3::hash(parsed.subject_public_key_info().as_ref()).as_bytes()))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{FINGERPRINT_PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&self.0).to_ascii_lowercase())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = IdentityError;
    fn from_str(text: &str) -> Result<Fingerprint, IdentityError> {
        let bad = || IdentityError::BadFingerprint(text.to_string());
        let body = text.trim().strip_prefix(FINGERPRINT_PREFIX).unwrap_or(text.trim());
        let bytes = data_encoding::BASE32_NOPAD.decode(body.to_ascii_uppercase().as_bytes()).map_err(|_| bad())?;
        Ok(Fingerprint(bytes.try_into().map_err(|_| bad())?))
    }
}

/// This host's key pair and self-signed certificate.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("Identity").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

const KEY_FILE: &str = "identity.key";
const CERT_FILE: &str = "identity.crt";

impl Identity {
    /// A fresh Ed25519 key pair with a self-signed certificate.
    ///
    /// # Errors
    /// [`IdentityError::Generate`] if the key or certificate cannot be made.
    pub fn generate() -> Result<Identity, IdentityError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let cert = rcgen::CertificateParams::new(vec!["xfer".to_string()])?.self_signed(&key)?;
        let cert = cert.der().clone();
        let fingerprint = Fingerprint::of_certificate(&cert)?;
        Ok(Identity { cert, key: PrivatePkcs8KeyDer::from(key.serialize_der()), fingerprint })
    }

    /// Loads the identity kept in `dir`, creating it (owner-only files) on
    /// first use.
    ///
    /// # Errors
    /// [`IdentityError`] if the files cannot be read, written or parsed.
    pub fn load_or_create(dir: &Path) -> Result<Identity, IdentityError> {
        let (key_path, cert_path) = (dir.join(KEY_FILE), dir.join(CERT_FILE));
        if key_path.exists() {
            return Self::load(&key_path, &cert_path);
        }
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let identity = Identity::generate()?;
        let key_pem = pem_encode("PRIVATE KEY", identity.key.secret_pkcs8_der());
        let cert_pem = pem_encode("CERTIFICATE", identity.cert.as_ref());
        write_private(&cert_path, cert_pem.as_bytes())?;
        // The key last: its presence marks a complete identity.
        write_private(&key_path, key_pem.as_bytes())?;
        Ok(identity)
    }

    fn load(key_path: &Path, cert_path: &Path) -> Result<Identity, IdentityError> {
        let bad =
            |path: &Path, reason: &str| IdentityError::BadIdentity { path: path.to_path_buf(), reason: reason.into() };
        let key_pem = fs::read_to_string(key_path).map_err(io_err(key_path))?;
        let cert_pem = fs::read_to_string(cert_path).map_err(io_err(cert_path))?;
        let key = pem_decode("PRIVATE KEY", &key_pem).ok_or_else(|| bad(key_path, "no PRIVATE KEY block"))?;
        let cert = pem_decode("CERTIFICATE", &cert_pem).ok_or_else(|| bad(cert_path, "no CERTIFICATE block"))?;
        let cert = CertificateDer::from(cert);
        let fingerprint = Fingerprint::of_certificate(&cert).map_err(|_| bad(cert_path, "not X.509"))?;
        // The key must be the certificate's: sign nothing, just compare keys.
        let pair = rcgen::KeyPair::try_from(key.as_slice()).map_err(|e| bad(key_path, &e.to_string()))?;
        let public = blake3::hash(&rcgen::PublicKeyData::subject_public_key_info(&pair));
        if *public.as_bytes() != fingerprint.0 {
            return Err(bad(cert_path, "certificate does not belong to identity.key"));
        }
        Ok(Identity { cert, key: PrivatePkcs8KeyDer::from(key), fingerprint })
    }

    /// The identity's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The DER certificate.
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    /// The private key, for the TLS configuration.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// xfer's configuration directory: `$XFER_CONFIG_DIR`, else systemd's
/// `$CONFIGURATION_DIRECTORY`, else `$XDG_CONFIG_HOME/xfer` (absolute),
/// else `~/.config/xfer`, else `/etc/xfer` for root without a home.
pub fn default_config_dir() -> Option<PathBuf> {
    crate::fs::dirs::config_dir()
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io_err(path))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io_err(path))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = data_encoding::BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_decode(label: &str, pem: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let body: String = pem[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    data_encoding::BASE64.decode(body.as_bytes()).ok()
}

/// What the known-hosts file says about a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostTrust {
    /// Pinned with this fingerprint.
    Pinned(Fingerprint),
    /// Not in the file.
    Unknown,
}

/// The client's pinned servers: one `HOST:PORT FINGERPRINT` per line, `#`
/// comments allowed.
#[derive(Debug)]
pub struct KnownHosts {
    path: PathBuf,
    entries: Vec<(String, Fingerprint)>,
}

impl KnownHosts {
    /// Reads `path` (a missing file is an empty list).
    ///
    /// # Errors
    /// [`IdentityError`] for unreadable files or malformed lines.
    pub fn load(path: &Path) -> Result<KnownHosts, IdentityError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err(path)(e)),
        };
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| IdentityError::BadLine { path: path.to_path_buf(), line: n + 1, reason };
            let mut words = line.split_whitespace();
            let (Some(host), Some(fp), None) = (words.next(), words.next(), words.next()) else {
                return Err(bad("expected `HOST:PORT FINGERPRINT`".into()));
            };
            entries.push((host.to_string(), fp.parse().map_err(|e: IdentityError| bad(e.to_string()))?));
        }
        Ok(KnownHosts { path: path.to_path_buf(), entries })
    }

    /// What the file says about `host` (as `HOST:PORT`).
    pub fn check(&self, host: &str) -> HostTrust {
        match self.entries.iter().find(|(h, _)| h == host) {
            Some((_, fp)) => HostTrust::Pinned(*fp),
            None => HostTrust::Unknown,
        }
    }

    /// Pins `host` to `fingerprint`, replacing an earlier pin, and rewrites
    /// the file atomically.
    ///
    /// # Errors
    /// [`IdentityError::Io`] if the file cannot be written.
    pub fn pin(&mut self, host: &str, fingerprint: Fingerprint) -> Result<(), IdentityError> {
        self.entries.retain(|(h, _)| h != host);
        self.entries.push((host.to_string(), fingerprint));
        let mut text = String::from("# xfer known hosts: HOST:PORT FINGERPRINT\n");
        for (h, fp) in &self.entries {
            text.push_str(&format!("{h} {fp}\n"));
        }
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        // A temporary of this process's own: two pushes pinning at once (cron
        // jobs sharing a config) must not rename each other's file away.
        static PINS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = PINS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temp = self.path.with_extension(format!("tmp.{}.{n}", std::process::id()));
        let written = fs::write(&temp, text).map_err(io_err(&temp));
        let renamed = written.and_then(|()| fs::rename(&temp, &self.path).map_err(io_err(&self.path)));
        if renamed.is_err() {
            let _ = fs::remove_file(&temp);
        }
        renamed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes sharing a config directory pin at the same time; each must
    /// succeed and leave a readable file (a shared temporary name once made
    /// one of them fail with "No such file or directory").
    #[test]
    fn concurrent_pins_do_not_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let fp: Fingerprint = Identity::generate().unwrap().fingerprint();
        std::thread::scope(|scope| {
            for t in 0..8 {
                let path = path.clone();
                scope.spawn(move || {
                    for i in 0..50 {
                        let mut hosts = KnownHosts::load(&path).unwrap();
                        hosts.pin(&format!("host{t}-{i}:7878"), fp).unwrap();
                    }
                });
            }
        });
        assert!(KnownHosts::load(&path).is_ok());
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("known_hosts")]);
    }

    #[test]
    fn fingerprint_roundtrips_as_text() {
        let id = Identity::generate().unwrap();
        let text = id.fingerprint().to_string();
        assert!(text.starts_with("xfer:") && text.len() == 5 + 52, "{text}");
        assert_eq!(text.parse::<Fingerprint>().unwrap(), id.fingerprint());
        assert_eq!(text.to_uppercase().replace("XFER:", "").parse::<Fingerprint>().unwrap(), id.fingerprint());
        assert!("xfer:abc".parse::<Fingerprint>().is_err());
        assert!("".parse::<Fingerprint>().is_err());
    }

    #[test]
    fn identity_persists_and_detects_mismatch() {
        let dir = tempfile::TempDir::new().unwrap();
        let first = Identity::load_or_create(dir.path()).unwrap();
        let again = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(first.fingerprint(), again.fingerprint());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
        // A certificate of another key is refused, not silently used.
        let other = Identity::generate().unwrap();
        fs::write(dir.path().join(CERT_FILE), pem_encode("CERTIFICATE", other.certificate().as_ref())).unwrap();
        assert!(matches!(Identity::load_or_create(dir.path()), Err(IdentityError::BadIdentity { .. })));
    }

    #[test]
    fn known_hosts_pin_and_check() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("known_hosts");
        let mut hosts = KnownHosts::load(&path).unwrap();
        let fp = Identity::generate().unwrap().fingerprint();
        assert_eq!(hosts.check("backup:7878"), HostTrust::Unknown);
        hosts.pin("backup:7878", fp).unwrap();
        let reloaded = KnownHosts::load(&path).unwrap();
        assert_eq!(reloaded.check("backup:7878"), HostTrust::Pinned(fp));
        fs::write(&path, "backup:7878 not-a-fingerprint\n").unwrap();
        let err = KnownHosts::load(&path).unwrap_err().to_string();
        assert!(err.contains(":1:"), "{err}");
    }
}
