//! Checks of the TLS files `kafka.security` names (`ca_file`, `cert_file`, `key_file`):
//! readable, PEM, the key belongs to the certificate, the certificate is in its validity
//! period. `check-config` and `run` call it, so a wrong file is named before librdkafka
//! reports a handshake failure with no path in it.
//!
//! The parsing uses the OpenSSL that librdkafka links (the `tls` feature); a build
//! without it checks only that the files are readable PEM.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::config::KafkaSecurity;

/// What is wrong with one TLS file.
#[derive(Debug, Error)]
pub enum TlsFileError {
    /// The file cannot be read.
    #[error("kafka.security.{key} {path}: cannot be read: {source}")]
    Read {
        /// The setting that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not what the setting needs.
    #[error("kafka.security.{key} {path}: {why}")]
    Bad {
        /// The setting that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong, in words.
        why: String,
    },
}

/// Checks every TLS file in `sec`; the first problem is returned. Files of a protocol
/// without TLS are not read (librdkafka ignores them too).
pub fn check(sec: &KafkaSecurity) -> Result<(), TlsFileError> {
    if !sec.protocol.is_tls() {
        return Ok(());
    }
    // A CA directory (hashed names, as `c_rehash` makes them) is librdkafka's to read.
    let ca = sec
        .ca_file
        .as_deref()
        .filter(|p| !p.is_dir())
        .map(|p| read("ca_file", p))
        .transpose()?;
    let cert = sec
        .cert_file
        .as_deref()
        .map(|p| read("cert_file", p))
        .transpose()?;
    let key = sec
        .key_file
        .as_deref()
        .map(|p| read("key_file", p))
        .transpose()?;
    if let (Some(p), Some(pem)) = (&sec.ca_file, &ca) {
        parse::certificates("ca_file", p, pem, parse::Validity::Any)?;
    }
    if let (Some(p), Some(pem)) = (&sec.cert_file, &cert) {
        parse::certificates("cert_file", p, pem, parse::Validity::First)?;
    }
    if let (Some(p), Some(pem)) = (&sec.key_file, &key) {
        parse::key("key_file", p, pem)?;
    }
    if let (Some(cp), Some(c), Some(kp), Some(k)) = (&sec.cert_file, &cert, &sec.key_file, &key) {
        parse::key_matches(cp, c, kp, k)?;
    }
    Ok(())
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    let bytes = std::fs::read(path).map_err(|source| TlsFileError::Read {
        key,
        path: path.to_owned(),
        source,
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(TlsFileError::Bad {
            key,
            path: path.to_owned(),
            why: "is not PEM (no \"-----BEGIN\" line)".into(),
        });
    }
    Ok(bytes)
}

// Only the TLS checks (feature `tls`) build these errors.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
fn bad(key: &'static str, path: &Path, why: impl Into<String>) -> TlsFileError {
    TlsFileError::Bad {
        key,
        path: path.to_owned(),
        why: why.into(),
    }
}

#[cfg(feature = "tls")]
mod parse {
    use std::path::Path;

    use openssl::asn1::Asn1Time;
    use openssl::pkey::PKey;
    use openssl::x509::X509;

    use super::{bad, TlsFileError};

    /// Which certificates of a file must be within their validity period.
    pub enum Validity {
        /// The first (a client certificate: the leaf comes first).
        First,
        /// At least one (a CA bundle may carry expired roots beside good ones).
        Any,
    }

    /// The certificates in the file parse, and (per `need`) are within their dates.
    pub fn certificates(
        key: &'static str,
        path: &Path,
        pem: &[u8],
        need: Validity,
    ) -> Result<(), TlsFileError> {
        let certs = X509::stack_from_pem(pem)
            .map_err(|e| bad(key, path, format!("no certificate can be read: {e}")))?;
        if certs.is_empty() {
            return Err(bad(key, path, "holds no certificate"));
        }
        let now = Asn1Time::days_from_now(0).map_err(|e| bad(key, path, e.to_string()))?;
        let problem = |c: &X509| {
            let subject = format!("{:?}", c.subject_name());
            if c.not_after() < now {
                Some(format!(
                    "the certificate {subject} expired on {}",
                    c.not_after()
                ))
            } else if c.not_before() > now {
                Some(format!(
                    "the certificate {subject} is not valid before {}",
                    c.not_before()
                ))
            } else {
                None
            }
        };
        let first = problem(&certs[0]);
        match need {
            Validity::First => first.map_or(Ok(()), |why| Err(bad(key, path, why))),
            Validity::Any if certs.iter().any(|c| problem(c).is_none()) => Ok(()),
            Validity::Any => Err(bad(
                key,
                path,
                format!(
                    "no certificate in it is valid now ({})",
                    first.unwrap_or_default()
                ),
            )),
        }
    }

    /// The file holds an unencrypted private key.
    pub fn key(key: &'static str, path: &Path, pem: &[u8]) -> Result<(), TlsFileError> {
        PKey::private_key_from_pem(pem)
            .map(|_| ())
            .map_err(|e| bad(key, path, format!("no unencrypted private key: {e}")))
    }

    /// The key is the private half of the (first) certificate's public key.
    pub fn key_matches(
        cert_path: &Path,
        cert: &[u8],
        key_path: &Path,
        key: &[u8],
    ) -> Result<(), TlsFileError> {
        let c = X509::from_pem(cert).map_err(|e| bad("cert_file", cert_path, e.to_string()))?;
        let k = PKey::private_key_from_pem(key)
            .map_err(|e| bad("key_file", key_path, e.to_string()))?;
        let public = c
            .public_key()
            .map_err(|e| bad("cert_file", cert_path, e.to_string()))?;
        if public.public_eq(&k) {
            Ok(())
        } else {
            Err(bad(
                "key_file",
                key_path,
                format!(
                    "is not the key of the certificate in {}",
                    cert_path.display()
                ),
            ))
        }
    }
}

#[cfg(not(feature = "tls"))]
mod parse {
    use std::path::Path;

    use super::TlsFileError;

    pub enum Validity {
        First,
        Any,
    }

    pub fn certificates(
        _: &'static str,
        _: &Path,
        _: &[u8],
        _: Validity,
    ) -> Result<(), TlsFileError> {
        Ok(())
    }

    pub fn key(_: &'static str, _: &Path, _: &[u8]) -> Result<(), TlsFileError> {
        Ok(())
    }

    pub fn key_matches(_: &Path, _: &[u8], _: &Path, _: &[u8]) -> Result<(), TlsFileError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sec(ca: Option<&Path>) -> KafkaSecurity {
        KafkaSecurity {
            protocol: crate::config::SecurityProtocol::Ssl,
            ca_file: ca.map(Path::to_owned),
            ..KafkaSecurity::default()
        }
    }

    #[test]
    fn a_ca_directory_and_files_of_a_plaintext_protocol_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check(&sec(Some(dir.path()))).is_ok());
        let plain = KafkaSecurity {
            ca_file: Some("/nonexistent".into()),
            ..KafkaSecurity::default()
        };
        assert!(check(&plain).is_ok());
    }

    #[test]
    fn no_files_is_fine() {
        assert!(check(&KafkaSecurity::default()).is_ok());
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = check(&sec(Some(Path::new("/nonexistent/ca.pem")))).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("kafka.security.ca_file /nonexistent/ca.pem"),
            "{text}"
        );
    }

    #[test]
    fn a_file_that_is_not_pem_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "hello").unwrap();
        let text = check(&sec(Some(&p))).unwrap_err().to_string();
        assert!(text.contains("is not PEM"), "{text}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn garbage_between_pem_markers_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(
            &p,
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let text = check(&sec(Some(&p))).unwrap_err().to_string();
        assert!(text.contains("ca_file"), "{text}");
    }
}
