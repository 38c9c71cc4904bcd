//! OAUTHBEARER tokens for Kafka from an OIDC token endpoint (the client-credentials
//! grant, RFC 6749 §4.4): what librdkafka asks for through its token-refresh callback,
//! which runs on the producer thread when it polls. Plain blocking HTTP (ureq), no
//! async runtime and no libcurl.
//!
//! [`token_request`] and [`parse_token`] are pure (unit tested); [`TokenSource::fetch`]
//! does the request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use thiserror::Error;

use crate::config::OAuth;

/// Why no token could be had.
#[derive(Debug, Error)]
pub enum OAuthError {
    /// `client_secret_file` cannot be read.
    #[error("kafka.security.oauth.client_secret_file {0}")]
    Secret(String),
    /// The token endpoint cannot be reached or answered with an error.
    #[error("token endpoint {url}: {why}")]
    Endpoint {
        /// The endpoint.
        url: String,
        /// What went wrong.
        why: String,
    },
    /// The answer is not a token response.
    #[error("token endpoint {url}: {why}")]
    BadAnswer {
        /// The endpoint.
        url: String,
        /// What is wrong with the answer.
        why: String,
    },
}

/// A token as librdkafka takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The access token (a JWT for Kafka's validator).
    pub value: String,
    /// The principal: the JWT's `sub`, else the client id.
    pub principal: String,
    /// When it expires, in Unix milliseconds.
    pub expires_ms: i64,
}

/// Fetches tokens for one `kafka.security.oauth` setting.
pub struct TokenSource {
    oauth: OAuth,
    http: ureq::Agent,
}

impl TokenSource {
    /// A source for `oauth`; no request yet. The timeouts are short: the request runs on
    /// the producer thread (librdkafka's refresh callback), which sends nothing
    /// meanwhile.
    pub fn new(oauth: OAuth) -> Result<TokenSource, OAuthError> {
        let mut cfg = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .timeout_connect(Some(Duration::from_secs(2)))
            .http_status_as_error(false);
        if let Some(ca) = &oauth.ca_file {
            cfg = cfg.tls_config(roots(ca)?);
        }
        Ok(TokenSource {
            oauth,
            http: cfg.build().into(),
        })
    }

    /// Asks the token endpoint for a new token. The secret file is read each time, so
    /// a rotated secret is used at the next refresh.
    pub fn fetch(&self) -> Result<Token, OAuthError> {
        let o = &self.oauth;
        let secret = match (&o.client_secret, &o.client_secret_file) {
            (Some(s), _) => s.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map_err(|e| OAuthError::Secret(format!("{}: {e}", f.display())))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
            (None, None) => String::new(),
        };
        let (auth, form) = token_request(&o.client_id, &secret, o.scope.as_deref());
        let endpoint = |why: String| OAuthError::Endpoint {
            url: o.token_endpoint_url.clone(),
            why,
        };
        let mut resp = self
            .http
            .post(&o.token_endpoint_url)
            .header("Authorization", &auth)
            .header("Accept", "application/json")
            .send_form(form.iter().map(|(k, v)| (*k, v.as_str())))
            .map_err(|e| endpoint(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(1024 * 1024)
            .read_to_string()
            .map_err(|e| endpoint(e.to_string()))?;
        if status != 200 {
            let short: String = body.chars().take(200).collect();
            return Err(endpoint(format!("HTTP {status}: {short}")));
        }
        parse_token(&body, &o.client_id, now_ms()).map_err(|why| OAuthError::BadAnswer {
            url: o.token_endpoint_url.clone(),
            why,
        })
    }
}

/// The token endpoint's CAs from a PEM file.
fn roots(path: &std::path::Path) -> Result<ureq::tls::TlsConfig, OAuthError> {
    use ureq::tls::{RootCerts, TlsConfig};
    let certs = crate::pem::certificates(path).map_err(|why| OAuthError::Endpoint {
        url: "kafka.security.oauth.ca_file".into(),
        why,
    })?;
    Ok(TlsConfig::builder()
        .root_certs(RootCerts::Specific(std::sync::Arc::new(certs)))
        .build())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The `Authorization` header (HTTP Basic with the client id and secret as they are,
/// which is what librdkafka's and Kafka's Java OIDC clients send; RFC 6749 §2.3.1 would
/// form-encode them first, which providers that do not decode refuse) and the form
/// fields.
pub fn token_request(
    client_id: &str,
    secret: &str,
    scope: Option<&str>,
) -> (String, Vec<(&'static str, String)>) {
    let user = format!("{client_id}:{secret}");
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user)
    );
    let mut form = vec![("grant_type", "client_credentials".to_owned())];
    if let Some(s) = scope {
        form.push(("scope", s.to_owned()));
    }
    (auth, form)
}

/// Reads a token response: `access_token` is required; the expiry is the JWT's `exp`,
/// else `expires_in`, else one hour; the principal is the JWT's `sub`, else
/// `client_id`.
pub fn parse_token(body: &str, client_id: &str, now_ms: i64) -> Result<Token, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let value = v["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or("no access_token in the answer")?
        .to_owned();
    let claims = value
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.trim_end_matches('='))
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    // Saturating: the numbers come from the token endpoint (a huge one overflowed:
    // a panic with overflow checks, a token expired long ago without).
    let exp_ms = claims
        .as_ref()
        .and_then(|c| c["exp"].as_i64())
        .map(|s| s.saturating_mul(1000));
    let expires_ms = exp_ms
        .or_else(|| {
            v["expires_in"]
                .as_i64()
                .map(|s| now_ms.saturating_add(s.saturating_mul(1000)))
        })
        .unwrap_or(now_ms.saturating_add(3_600_000));
    let principal = claims
        .as_ref()
        .and_then(|c| c["sub"].as_str().map(str::to_owned))
        .unwrap_or_else(|| client_id.to_owned());
    Ok(Token {
        value,
        principal,
        expires_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b(r#"{"alg":"RS256"}"#), b(claims))
    }

    #[test]
    fn the_request_is_basic_auth_and_client_credentials() {
        let (auth, form) = token_request("my client", "s3cr:t", Some("kafka"));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "my client:s3cr:t");
        assert_eq!(
            form,
            vec![
                ("grant_type", "client_credentials".to_owned()),
                ("scope", "kafka".to_owned())
            ]
        );
    }

    #[test]
    fn expiry_and_principal_come_from_the_jwt_first() {
        let t = jwt(r#"{"sub":"svc-logagent","exp":2000000000}"#);
        let body = format!(r#"{{"access_token":"{t}","expires_in":60}}"#);
        let tok = parse_token(&body, "cid", 1_000).unwrap();
        assert_eq!(tok.principal, "svc-logagent");
        assert_eq!(tok.expires_ms, 2_000_000_000_000);
        assert_eq!(tok.value, t);
    }

    #[test]
    fn an_opaque_token_uses_expires_in_and_the_client_id() {
        let tok = parse_token(r#"{"access_token":"abc","expires_in":60}"#, "cid", 1_000).unwrap();
        assert_eq!((tok.principal.as_str(), tok.expires_ms), ("cid", 61_000));
        let tok = parse_token(r#"{"access_token":"abc"}"#, "cid", 0).unwrap();
        assert_eq!(tok.expires_ms, 3_600_000);
    }

    #[test]
    fn huge_lifetimes_saturate_instead_of_overflowing() {
        let tok = parse_token(
            r#"{"access_token":"a","expires_in":99999999999999999}"#,
            "cid",
            1_000,
        )
        .unwrap();
        assert_eq!(tok.expires_ms, i64::MAX);
        let tok = parse_token(
            &format!(
                r#"{{"access_token":"{}"}}"#,
                jwt(r#"{"exp":-99999999999999999}"#)
            ),
            "cid",
            0,
        )
        .unwrap();
        assert_eq!(tok.expires_ms, i64::MIN);
    }

    #[test]
    fn answers_without_a_token_are_refused() {
        assert!(parse_token("<html>", "c", 0).is_err());
        assert!(parse_token(r#"{"error":"invalid_client"}"#, "c", 0).is_err());
        assert!(parse_token(r#"{"access_token":""}"#, "c", 0).is_err());
    }
}
