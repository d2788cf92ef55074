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
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
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
    Generate(rcgen::Error),
    /// A certificate from a peer could not be parsed.
    #[error("peer certificate is not valid X.509")]
    BadCertificate,
    /// Text that should be a fingerprint is not one.
    #[error("{0:?} is not a fingerprint (expected xfer: and 52 base32 characters, as `xfer id` prints)")]
    BadFingerprint(String),
    /// Text that should name a server (`HOST[:PORT]`) does not.
    #[error("{text:?} is not a server's HOST[:PORT]: {reason}")]
    BadAuthority {
        /// The text.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
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

// Not `#[from]`, which would make the cause a `source()` too, said twice
// by a printer of the error chain.
impl From<rcgen::Error> for IdentityError {
    fn from(e: rcgen::Error) -> Self {
        IdentityError::Generate(e)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |cause| IdentityError::Io { path: path.to_path_buf(), cause }
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

/// Port of `xfer serve` when a server is named without one.
pub const DEFAULT_PORT: u16 = 7878;

/// A server's name as connections and known hosts use it: `HOST[:PORT]`
/// becomes `host:PORT` (the host in lower case, [`DEFAULT_PORT`] when none
/// is given, an IPv6 address in brackets), so `backup`, `Backup:7878` and
/// the authority of `xfer://backup/site` all name the same pin.
///
/// # Errors
/// [`IdentityError::BadAuthority`] for an empty host or a port that is not
/// a number from 1 to 65535.
pub fn server_authority(text: &str) -> Result<String, IdentityError> {
    let bad = |reason: &str| IdentityError::BadAuthority { text: text.to_string(), reason: reason.to_string() };
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(|| bad("an IPv6 address needs its closing `]`"))?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| bad("expected `:PORT` after `]`"))?),
        };
        if inside.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("only an IPv6 address goes in brackets"));
        }
        (format!("[{inside}]"), port)
    } else if text.matches(':').count() > 1 {
        // `fe80::1:7878` would read as an address or as one with a port.
        return Err(bad(&format!("put an IPv6 address in brackets, as [{text}] or [ADDRESS]:PORT")));
    } else if let Some((user, host)) = text.split_once('@') {
        return Err(bad(&format!(
            "{user:?} is a user name; xfer knows a client by its key (`xfer id`), not by a user: write {host}"
        )));
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (text.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(bad("it names no host"));
    }
    let bracketed = host.starts_with('[');
    if host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@' || (c == ':' && !bracketed)) {
        return Err(bad("a host name has no spaces, `/`, `@` or `:` (an IPv6 address goes in brackets)"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(digits) => match digits.parse::<u16>() {
            Ok(port) if port > 0 && digits.bytes().all(|b| b.is_ascii_digit()) => port,
            _ => return Err(bad(&format!("the port {digits:?} is not a number from 1 to 65535"))),
        },
    };
    Ok(format!("{}:{port}", host.to_ascii_lowercase()))
}

/// The client's pinned servers: one `HOST:PORT FINGERPRINT` per line, `#`
/// comments allowed. A pin replaces its host's line in place and keeps
/// every other line (comments, blank lines, order) as it was.
#[derive(Debug)]
pub struct KnownHosts {
    path: PathBuf,
    /// The file's lines, as read.
    lines: Vec<String>,
    /// The pins, in file order.
    pins: Vec<Pin>,
}

/// One pin line of a known-hosts file.
#[derive(Debug)]
struct Pin {
    /// Its index in [`KnownHosts::lines`].
    line: usize,
    /// The server, as [`server_authority`] names it (as written when it
    /// does not parse as one).
    host: String,
    fingerprint: Fingerprint,
}

/// The first line of a known-hosts file xfer creates.
const KNOWN_HOSTS_HEADER: &str = "# xfer known hosts: HOST:PORT FINGERPRINT";

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
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let pins = parse_pins(path, &lines)?;
        Ok(KnownHosts { path: path.to_path_buf(), lines, pins })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the file says about `host` (`HOST[:PORT]`): its first pin.
    pub fn check(&self, host: &str) -> HostTrust {
        match self.find(host) {
            Some(pin) => HostTrust::Pinned(pin.fingerprint),
            None => HostTrust::Unknown,
        }
    }

    /// The 1-based line that pins `host`, for messages.
    pub fn line_of(&self, host: &str) -> Option<usize> {
        self.find(host).map(|pin| pin.line + 1)
    }

    fn find(&self, host: &str) -> Option<&Pin> {
        let host = server_authority(host).unwrap_or_else(|_| host.to_string());
        self.pins.iter().find(|pin| pin.host == host)
    }

    /// Pins `host` (`HOST[:PORT]`) to `fingerprint`: its line is replaced
    /// where it stands (further lines for it are dropped), or a line is
    /// added at the end; every other line stays as it is. The file is
    /// read again first (another process may have pinned since), then
    /// replaced atomically with the same permissions. Returns the pin it
    /// replaced.
    ///
    /// # Errors
    /// [`IdentityError`] if the file cannot be read, parsed or written.
    pub fn pin(&mut self, host: &str, fingerprint: Fingerprint) -> Result<Option<Fingerprint>, IdentityError> {
        let host = server_authority(host)?;
        *self = KnownHosts::load(&self.path)?;
        let previous = self.find(&host).map(|pin| pin.fingerprint);
        let ours: Vec<usize> = self.pins.iter().filter(|pin| pin.host == host).map(|pin| pin.line).collect();
        let line = format!("{host} {fingerprint}");
        match ours.split_first() {
            Some((&first, rest)) => {
                self.lines[first] = line;
                for &later in rest.iter().rev() {
                    self.lines.remove(later);
                }
            }
            None => {
                if self.lines.is_empty() {
                    self.lines.push(KNOWN_HOSTS_HEADER.to_string());
                }
                self.lines.push(line);
            }
        }
        let mut text = self.lines.join("\n");
        text.push('\n');
        replace_file(&self.path, text.as_bytes())?;
        self.pins = parse_pins(&self.path, &self.lines)?;
        Ok(previous)
    }
}

/// The pins among `lines` of the file at `path`.
fn parse_pins(path: &Path, lines: &[String]) -> Result<Vec<Pin>, IdentityError> {
    let mut pins = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| IdentityError::BadLine { path: path.to_path_buf(), line: n + 1, reason };
        let mut words = line.split_whitespace();
        let (Some(host), Some(fp), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad("expected `HOST:PORT FINGERPRINT`".into()));
        };
        let fingerprint = fp.parse().map_err(|e: IdentityError| bad(e.to_string()))?;
        let host = server_authority(host).unwrap_or_else(|_| host.to_string());
        pins.push(Pin { line: n, host, fingerprint });
    }
    Ok(pins)
}

/// Replaces the file at `path` with `bytes` atomically: a temporary beside
/// it, with the old file's permissions, synced, renamed over it, and the
/// directory synced, so a crash leaves the old file or the new one whole.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mode = match fs::metadata(path) {
        Ok(meta) => Some(meta.permissions().mode() & 0o7777),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(path)(e)),
    };
    // A temporary of this process's own: two pushes pinning at once (cron
    // jobs sharing a config) must not rename each other's file away.
    static PINS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PINS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    let written = (|| {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&temp)?;
        if let Some(mode) = mode {
            // Set explicitly: the umask applies to the mode given at creation.
            file.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        file.write_all(bytes)?;
        file.sync_all()
    })()
    .map_err(io_err(&temp));
    let renamed = written.and_then(|()| fs::rename(&temp, path).map_err(io_err(path)));
    if renamed.is_err() {
        let _ = fs::remove_file(&temp);
    }
    renamed?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
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

    #[test]
    fn server_authority_adds_the_default_port_once() {
        let ok = |text: &str| server_authority(text).unwrap();
        assert_eq!(ok("backup"), "backup:7878");
        assert_eq!(ok("Backup.Example:7878"), "backup.example:7878");
        assert_eq!(ok("10.0.0.1:9000"), "10.0.0.1:9000");
        assert_eq!(ok("[::1]"), "[::1]:7878");
        assert_eq!(ok("[::1]:9000"), "[::1]:9000");
        let bad = ["", ":7878", "host:", "host:abc", "host:0", "host:65536", "host:+1", "[::1", "[::1]x", "a b", "h:1:2"];
        for bad in bad.into_iter().chain(["::1", "fe80::1:7878", "[backup]", "me@backup"]) {
            assert!(server_authority(bad).is_err(), "{bad:?} was accepted");
        }
    }

    /// A pin replaces its host's line where it stands; comments, blank
    /// lines, other hosts and the file's permissions stay.
    #[test]
    fn known_hosts_pin_edits_in_place() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("known_hosts");
        let (old, new, other) = (Identity::generate().unwrap(), Identity::generate().unwrap(), Identity::generate().unwrap());
        let (old, new, other) = (old.fingerprint(), new.fingerprint(), other.fingerprint());
        let before = format!("# mine\n\nbackup:7878 {old}\n# the office\noffice:7000 {other}\nbackup {old}\n");
        fs::write(&path, &before).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let mut hosts = KnownHosts::load(&path).unwrap();
        assert_eq!(hosts.line_of("backup"), Some(3));
        assert_eq!(hosts.pin("backup", new).unwrap(), Some(old));
        let after = fs::read_to_string(&path).unwrap();
        assert_eq!(after, format!("# mine\n\nbackup:7878 {new}\n# the office\noffice:7000 {other}\n"));
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(KnownHosts::load(&path).unwrap().check("backup:7878"), HostTrust::Pinned(new));
    }
}
