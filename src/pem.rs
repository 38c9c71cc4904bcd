//! Certificates from PEM files for the HTTP clients (etcd, the OAuth token endpoint),
//! in the form ureq's TLS (rustls) takes.

use std::path::Path;

/// Every certificate in the PEM file at `path`; an error names the file.
pub fn certificates(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    use ureq::tls::{parse_pem, PemItem};
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs: Vec<_> = parse_pem(&pem)
        .filter_map(|i| match i {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}
