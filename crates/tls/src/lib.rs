//! ferry-tls: how Ferry trusts the server it backs up to, and what a refused certificate
//! means in words a person can act on.
//!
//! A server is trusted ([`ServerTrust`]) through the platform's roots, plus the certificates
//! of a PEM file (`ca_file`: a private CA, or the server's own self-signed certificate), or
//! through one pinned certificate (`cert_sha256`: exactly that certificate, whatever signed
//! it, its names or its dates — as Syncthing trusts devices). [`ServerTls`] is that trust
//! built once into a rustls client configuration; the transfer engine, the daemon's check
//! client and ferry-backup each give it to reqwest
//! (`ClientBuilder::tls_backend_preconfigured(tls.rustls_config())`), so all of them accept
//! exactly the same certificates.
//!
//! A certificate the verifier refuses is reported with the reason, taken from rustls' typed
//! error (never its text), and the SHA-256 fingerprint of what the server presented, carried
//! inside the error; [`CertificateProblem::find`] reads both back from a failed request's
//! error chain.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// A certificate's SHA-256 fingerprint: the hash of its DER encoding. Shown as `AA:BB:…`
/// (upper-case pairs, as `ferry-server` and `openssl x509 -noout -fingerprint -sha256` print
/// it); read from that form or from 64 plain hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A fingerprint that could not be read; says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a SHA-256 certificate fingerprint ({reason}): expected 64 hex digits, or 32 pairs separated by ':' as `ferry-server` prints it at start"
)]
pub struct FingerprintError {
    reason: String,
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(s: &str) -> Result<Fingerprint, FingerprintError> {
        let bad = |reason: String| FingerprintError { reason };
        let t = s.trim();
        // What people paste: openssl's `sha256 Fingerprint=AA:…`, or a `sha256:` label.
        let lower = t.to_ascii_lowercase();
        let t = ["sha256 fingerprint=", "sha256:", "sha256=", "sha-256:"]
            .iter()
            .find(|p| lower.starts_with(*p))
            .map_or(t, |p| t[p.len()..].trim());
        if t.is_empty() {
            return Err(bad("empty".into()));
        }
        let digits = if t.contains(':') {
            let groups: Vec<&str> = t.split(':').collect();
            if groups.len() != 32 || groups.iter().any(|g| g.len() != 2) {
                return Err(bad(format!(
                    "{} ':'-separated groups; the form with ':' needs 32 pairs of hex digits",
                    groups.len()
                )));
            }
            groups.concat()
        } else {
            t.to_owned()
        };
        if let Some(c) = digits.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(bad(format!("{c:?} is not a hex digit")));
        }
        if digits.len() != 64 {
            return Err(bad(format!("{} hex digits", digits.len())));
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16)
                .map_err(|e| bad(e.to_string()))?;
        }
        Ok(Fingerprint(out))
    }
}

/// How one server is trusted, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerTrust {
    /// A PEM file of certificates trusted beside the platform's roots: a private CA, or the
    /// server's own (self-signed) certificate.
    pub ca_file: Option<PathBuf>,
    /// Exactly this certificate is accepted (whatever signed it, its names, its dates); the
    /// platform's roots and `ca_file` are then not consulted.
    pub cert_sha256: Option<Fingerprint>,
}

impl ServerTrust {
    /// Nothing configured: the platform's roots alone.
    pub fn is_default(&self) -> bool {
        self.ca_file.is_none() && self.cert_sha256.is_none()
    }
}

/// The trust settings could not be made into a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("the CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("no trusted root certificates: {0}")]
    Roots(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The certificates of a PEM file (every `CERTIFICATE` block; at least one).
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let err = |reason: String| TrustError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let pem_reason = |e: rustls::pki_types::pem::Error| match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("not valid PEM ({other:?})"),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(pem_reason(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(pem_reason(e)))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block in the file".into()));
    }
    Ok(certs)
}

/// One server's trust built into a rustls client configuration (cheap to clone).
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: rustls::ClientConfig,
}

impl ServerTls {
    /// Reads `ca_file` (if any) and the platform's roots (unless a certificate is pinned).
    pub fn new(trust: &ServerTrust) -> Result<ServerTls, TrustError> {
        let provider = CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        let mode = match (&trust.cert_sha256, &trust.ca_file) {
            (Some(pin), _) => Mode::Pinned(*pin),
            (None, ca_file) => {
                let listed = match ca_file {
                    Some(p) => read_ca_file(p)?,
                    None => Vec::new(),
                };
                let roots = if listed.is_empty() {
                    rustls_platform_verifier::Verifier::new(provider.clone())
                        .map_err(|e| TrustError::Roots(e.to_string()))?
                } else {
                    rustls_platform_verifier::Verifier::new_with_extra_roots(
                        listed.iter().cloned(),
                        provider.clone(),
                    )
                    .map_err(|e| TrustError::CaFile {
                        path: ca_file.clone().unwrap_or_default(),
                        reason: e.to_string(),
                    })?
                };
                Mode::Roots {
                    verifier: Arc::new(roots),
                    listed,
                }
            }
        };
        let verifier = FerryVerifier {
            mode,
            provider: provider.clone(),
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        // Ferry speaks HTTP/1.1 (as reqwest's own rustls configuration says without http2).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls { config })
    }

    /// The configuration to give reqwest (`ClientBuilder::tls_backend_preconfigured`).
    pub fn rustls_config(&self) -> rustls::ClientConfig {
        self.config.clone()
    }
}

#[derive(Debug)]
enum Mode {
    /// Exactly the certificate with this fingerprint.
    Pinned(Fingerprint),
    /// The platform's roots plus `listed` (the CA file's certificates).
    Roots {
        verifier: Arc<rustls_platform_verifier::Verifier>,
        listed: Vec<CertificateDer<'static>>,
    },
}

#[derive(Debug)]
struct FerryVerifier {
    mode: Mode,
    provider: Arc<CryptoProvider>,
}

impl FerryVerifier {
    /// A certificate listed in the CA file itself, which the chain check refused because it
    /// is its own issuer or carries the CA flag (what `openssl req -x509` makes): it is
    /// trusted as listed, still checked for its dates and for the name in the URL.
    fn listed(
        &self,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let mut anchor = RootCertStore::empty();
        anchor.add(end_entity.clone())?;
        match verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &anchor,
            &[],
            now,
            self.provider.signature_verification_algorithms.all,
        ) {
            Ok(()) => {}
            // webpki checks a certificate's dates before its CA flag, so a certificate
            // refused for the flag alone is within its dates.
            Err(e) if is_ca_used_as_end_entity(&e) => {}
            Err(e) => return Err(e),
        }
        verify_server_name(&parsed, server_name)?;
        Ok(ServerCertVerified::assertion())
    }
}

impl ServerCertVerifier for FerryVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = Fingerprint::of(end_entity);
        let (verifier, listed) = match &self.mode {
            Mode::Pinned(pin) if *pin == seen => return Ok(ServerCertVerified::assertion()),
            Mode::Pinned(pin) => {
                return Err(rejected(
                    CertReason::FingerprintMismatch { expected: *pin },
                    seen,
                ));
            }
            Mode::Roots { verifier, listed } => (verifier, listed),
        };
        let e = match verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let unknown_issuer = matches!(
            &e,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ) || is_ca_used_as_end_entity(&e);
        let e = if unknown_issuer && listed.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            match self.listed(end_entity, server_name, now) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            }
        } else {
            e
        };
        match CertReason::of(&e, self_issued(end_entity)) {
            Some(reason) => Err(rejected(reason, seen)),
            None => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Is the certificate its own issuer (subject and issuer the same name)?
fn self_issued(der: &CertificateDer<'_>) -> bool {
    webpki::EndEntityCert::try_from(der).is_ok_and(|c| c.issuer() == c.subject())
}

fn is_ca_used_as_end_entity(e: &rustls::Error) -> bool {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(o)) => matches!(
            o.0.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::CaUsedAsEndEntity)
        ),
        _ => false,
    }
}

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertReason {
    /// Signed by itself, and not among the trusted certificates.
    SelfSigned,
    /// Signed by an authority that is not trusted.
    UnknownIssuer,
    /// A CA's certificate presented as the server's own, and not trusted.
    CaAsServerCertificate,
    /// Valid for other names than the URL's host.
    NameMismatch {
        expected: Option<String>,
        presented: Vec<String>,
    },
    Expired {
        days_ago: Option<u64>,
    },
    NotYetValid,
    Revoked,
    /// A certificate is pinned, and the server presented another one.
    FingerprintMismatch {
        expected: Fingerprint,
    },
    /// Another problem (a bad signature, an unsupported algorithm, ...), as rustls words it.
    Other(String),
}

impl CertReason {
    /// The reason behind a rustls error, if it is about the certificate.
    pub fn of(e: &rustls::Error, self_issued: bool) -> Option<CertReason> {
        let rustls::Error::InvalidCertificate(ce) = e else {
            return None;
        };
        Some(match ce {
            CertificateError::UnknownIssuer if self_issued => CertReason::SelfSigned,
            CertificateError::UnknownIssuer => CertReason::UnknownIssuer,
            _ if is_ca_used_as_end_entity(e) && self_issued => CertReason::SelfSigned,
            _ if is_ca_used_as_end_entity(e) => CertReason::CaAsServerCertificate,
            CertificateError::NotValidForName => CertReason::NameMismatch {
                expected: None,
                presented: Vec::new(),
            },
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => CertReason::NameMismatch {
                expected: Some(expected.to_str().into_owned()),
                presented: presented.clone(),
            },
            CertificateError::Expired => CertReason::Expired { days_ago: None },
            CertificateError::ExpiredContext { time, not_after } => CertReason::Expired {
                days_ago: Some(time.as_secs().saturating_sub(not_after.as_secs()) / 86_400),
            },
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                CertReason::NotYetValid
            }
            CertificateError::Revoked => CertReason::Revoked,
            other => CertReason::Other(other.to_string()),
        })
    }
}

impl fmt::Display for CertReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertReason::SelfSigned => f.write_str("it is self-signed"),
            CertReason::UnknownIssuer => f.write_str("it is signed by an unknown issuer"),
            CertReason::CaAsServerCertificate => f.write_str(
                "it is a CA's certificate used as the server's own, from an unknown issuer",
            ),
            CertReason::NameMismatch {
                expected,
                presented,
            } => {
                f.write_str("name mismatch: it is not valid for ")?;
                match expected {
                    Some(e) => write!(f, "{e}")?,
                    None => f.write_str("the URL's host")?,
                }
                if !presented.is_empty() {
                    write!(f, " (it names {})", presented.join(", "))?;
                }
                Ok(())
            }
            CertReason::Expired { days_ago: Some(d) } => write!(f, "it expired {d} days ago"),
            CertReason::Expired { days_ago: None } => f.write_str("it has expired"),
            CertReason::NotYetValid => f.write_str("it is not valid yet (check the clock)"),
            CertReason::Revoked => f.write_str("it is revoked"),
            CertReason::FingerprintMismatch { expected } => {
                write!(
                    f,
                    "fingerprint mismatch: the pinned certificate is sha256 {expected}"
                )
            }
            CertReason::Other(s) => f.write_str(s),
        }
    }
}

/// A refusal by [`FerryVerifier`], carried through rustls and the HTTP stack inside
/// `CertificateError::Other` (so the alert sent to the server is `bad_certificate`).
#[derive(Debug)]
struct Rejected {
    reason: CertReason,
    seen: Fingerprint,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}; the server presented sha256 {}",
            self.reason, self.seen
        )
    }
}

impl std::error::Error for Rejected {}

fn rejected(reason: CertReason, seen: Fingerprint) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Rejected {
        reason,
        seen,
    }))))
}

/// Why a connection failed on the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateProblem {
    pub reason: CertReason,
    /// What the server presented, when Ferry's own verifier saw it.
    pub seen_sha256: Option<Fingerprint>,
}

impl CertificateProblem {
    /// The certificate problem a failed request (a `reqwest::Error`, an `io::Error`, ...)
    /// comes from, found as rustls' typed error in its source chain; `None`: it is not one.
    pub fn find(e: &(dyn std::error::Error + 'static)) -> Option<CertificateProblem> {
        let mut next = Some(e);
        while let Some(err) = next {
            if let Some(t) = err.downcast_ref::<rustls::Error>() {
                return CertificateProblem::of(t);
            }
            // An `io::Error`'s `source()` skips the error it wraps: look inside it.
            if let Some(inner) = err
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                && let Some(p) = CertificateProblem::find(inner)
            {
                return Some(p);
            }
            next = err.source();
        }
        None
    }

    fn of(e: &rustls::Error) -> Option<CertificateProblem> {
        if let rustls::Error::InvalidCertificate(CertificateError::Other(o)) = e
            && let Some(r) = o.0.downcast_ref::<Rejected>()
        {
            return Some(CertificateProblem {
                reason: r.reason.clone(),
                seen_sha256: Some(r.seen),
            });
        }
        CertReason::of(e, false).map(|reason| CertificateProblem {
            reason,
            seen_sha256: None,
        })
    }
}

impl fmt::Display for CertificateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reason)?;
        if let Some(s) = &self.seen_sha256 {
            write!(f, "; the server presented sha256 {s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e48c957477c2c8ec812652e07017e7214ae032f8095b0f8ce72afc4ab289ae75";
    const COLONS: &str = "E4:8C:95:74:77:C2:C8:EC:81:26:52:E0:70:17:E7:21:4A:E0:32:F8:09:5B:0F:8C:E7:2A:FC:4A:B2:89:AE:75";

    #[test]
    fn fingerprints_read_hex_and_colon_forms_and_print_the_colon_form() {
        let a: Fingerprint = HEX.parse().unwrap();
        let b: Fingerprint = COLONS.parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.0[0], 0xe4);
        assert_eq!(a.0[31], 0x75);
        assert_eq!(a.to_string(), COLONS);
        assert_eq!(COLONS.to_ascii_lowercase().parse::<Fingerprint>(), Ok(a));
        assert_eq!(HEX.to_ascii_uppercase().parse::<Fingerprint>(), Ok(a));
        // What openssl prints, and surrounding blanks, as pasted.
        assert_eq!(format!("sha256 Fingerprint={COLONS}\n").parse(), Ok(a));
        assert_eq!(format!("  SHA256:{HEX} ").parse(), Ok(a));
        assert_eq!(a.to_string().parse(), Ok(a), "round trip");
        assert_eq!(Fingerprint::of(b"x").to_string().len(), 32 * 3 - 1);
    }

    #[test]
    fn bad_fingerprints_are_refused_saying_why() {
        let err = |s: &str| s.parse::<Fingerprint>().unwrap_err().to_string();
        let e = err("");
        assert!(e.contains("empty") && e.contains("64 hex digits"), "{e}");
        let e = err(&HEX[..62]);
        assert!(e.contains("62 hex digits"), "{e}");
        let e = err(&format!("{HEX}00"));
        assert!(e.contains("66 hex digits"), "{e}");
        let e = err(&HEX.replace('e', "g"));
        assert!(e.contains("'g' is not a hex digit"), "{e}");
        let e = err(&COLONS[3..]);
        assert!(e.contains("31 ':'-separated groups"), "{e}");
        let e = err(&COLONS.replacen(":", "", 1));
        assert!(e.contains("32 pairs"), "{e}");
        let e = err("AA:BB");
        assert!(e.contains("2 ':'-separated groups"), "{e}");
        assert!(err("sha256 Fingerprint=").contains("empty"));
        // A SHA-1 fingerprint (20 bytes) is not taken for a short SHA-256 one.
        let sha1 = "AB:".repeat(19) + "AB";
        assert!(err(&sha1).contains("20 ':'-separated groups"));
    }

    #[test]
    fn problems_are_found_through_io_errors_by_their_type() {
        // What tokio-rustls hands up: the rustls error inside an io::Error, whose `source()`
        // does not lead to it.
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let p = CertificateProblem::find(&io).unwrap();
        assert_eq!(p.reason, CertReason::UnknownIssuer);
        assert_eq!(p.seen_sha256, None);

        let seen = Fingerprint([7; 32]);
        let expected = Fingerprint([9; 32]);
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rejected(CertReason::FingerprintMismatch { expected }, seen),
        );
        let p = CertificateProblem::find(&io).unwrap();
        assert_eq!(p.reason, CertReason::FingerprintMismatch { expected });
        assert_eq!(p.seen_sha256, Some(seen));
        assert!(p.to_string().contains("fingerprint mismatch"), "{p}");

        let other = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(CertificateProblem::find(&other), None);
        assert_eq!(
            CertificateProblem::find(&rustls::Error::General("x".into())),
            None
        );
    }

    #[test]
    fn reasons_come_from_the_error_kind() {
        let ca_flag = rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
            Arc::new(webpki::Error::CaUsedAsEndEntity),
        )));
        assert_eq!(CertReason::of(&ca_flag, true), Some(CertReason::SelfSigned));
        assert_eq!(
            CertReason::of(&ca_flag, false),
            Some(CertReason::CaAsServerCertificate)
        );
        let expired = rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
            time: UnixTime::since_unix_epoch(std::time::Duration::from_secs(10 * 86_400)),
            not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(7 * 86_400)),
        });
        assert_eq!(
            CertReason::of(&expired, false),
            Some(CertReason::Expired { days_ago: Some(3) })
        );
        let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("backup.example.org").unwrap(),
            presented: vec!["DnsName(\"other.example.org\")".into()],
        });
        let r = CertReason::of(&name, false).unwrap();
        assert!(r.to_string().starts_with("name mismatch"), "{r}");
        assert!(r.to_string().contains("backup.example.org"), "{r}");
        assert_eq!(
            CertReason::of(&rustls::Error::General("x".into()), true),
            None
        );
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_with_its_path() {
        let dir = std::env::temp_dir().join(format!("ferry-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = ServerTls::new(&ServerTrust {
            ca_file: Some(empty.clone()),
            cert_sha256: None,
        })
        .unwrap_err();
        assert!(e.to_string().contains(&*empty.to_string_lossy()), "{e}");
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
        let missing = dir.join("missing.pem");
        let e = ServerTls::new(&ServerTrust {
            ca_file: Some(missing.clone()),
            cert_sha256: None,
        })
        .unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
        // A pin alone reads no file and needs no roots.
        ServerTls::new(&ServerTrust {
            ca_file: None,
            cert_sha256: Some(Fingerprint([1; 32])),
        })
        .unwrap();
    }
}
