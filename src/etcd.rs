//! A small synchronous etcd v3 client over the JSON gateway that every etcd ≥ 3.4
//! serves on its client port (`POST /v3/kv/range` and friends), on `ureq`.
//!
//! Why not a gRPC crate: they all need tokio, and the agent has no async runtime. The
//! gateway's quirks handled here: keys and values are base64, int64 fields are JSON
//! strings, zero fields are omitted, the auth token goes raw into `Authorization` (etcd
//! 3.4 rejects a `Bearer` prefix), tokens expire (re-authenticate on 401 and retry once).
//! Several endpoints: the current one is sticky; connection errors, timeouts and 5xx move
//! on to the next.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use thiserror::Error;

/// How to reach etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdSettings {
    /// `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// User for etcd auth.
    pub username: Option<String>,
    /// Password for etcd auth.
    pub password: Option<String>,
    /// CA bundle (PEM) for `https://` endpoints.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    pub key_file: Option<PathBuf>,
    /// Timeout of one request.
    pub timeout: Duration,
}

/// What went wrong talking to etcd.
#[derive(Debug, Error)]
pub enum EtcdError {
    /// No endpoint answered.
    #[error("etcd unreachable at {endpoints}: {last}")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// The last transport error.
        last: String,
    },
    /// Authentication failed or is required.
    #[error("etcd authentication failed: {0}")]
    Auth(String),
    /// The endpoint has no `/v3/` gateway (etcd older than 3.4, or the gateway is off).
    #[error("{0} has no /v3 JSON gateway (etcd older than 3.4, or --enable-grpc-gateway=false)")]
    NoGateway(String),
    /// etcd answered with an error.
    #[error("etcd error (code {code}): {message}")]
    Server {
        /// gRPC status code.
        code: i64,
        /// etcd's message.
        message: String,
    },
    /// The answer was not what the gateway sends.
    #[error("unexpected etcd response: {0}")]
    BadResponse(String),
    /// TLS files could not be read or parsed.
    #[error("etcd TLS setup: {0}")]
    Tls(String),
}

/// One key and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value bytes.
    pub value: Vec<u8>,
    /// Revision of the key's last write.
    pub mod_revision: i64,
}

/// A single-key read: the key (if present) and the store revision it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetResult {
    /// Store-wide revision of the read.
    pub revision: i64,
    /// The key, if it exists.
    pub kv: Option<KeyValue>,
}

/// The client. Not `Sync`: one thread owns it.
pub struct EtcdClient {
    http: ureq::Agent,
    settings: EtcdSettings,
    current: usize,
    token: Option<String>,
}

/// int64 fields arrive as strings; accept numbers too.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

fn unb64(v: &Value) -> Result<Vec<u8>, EtcdError> {
    match v.as_str() {
        None => Ok(Vec::new()),
        Some(s) => B64
            .decode(s)
            .map_err(|e| EtcdError::BadResponse(format!("bad base64: {e}"))),
    }
}

fn kv_of(v: &Value) -> Result<KeyValue, EtcdError> {
    Ok(KeyValue {
        key: String::from_utf8_lossy(&unb64(&v["key"])?).into_owned(),
        value: unb64(&v["value"])?,
        mod_revision: int(&v["mod_revision"]),
    })
}

/// The end of the key range that holds every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

enum Attempt {
    Done(Value),
    /// Try the next endpoint (transport error, 5xx, no leader).
    Next(String),
    Fail(EtcdError),
}

impl EtcdClient {
    /// Builds a client; reads TLS files now so that a bad file fails at start-up.
    pub fn new(settings: EtcdSettings) -> Result<EtcdClient, EtcdError> {
        if settings.endpoints.is_empty() {
            return Err(EtcdError::BadResponse(
                "no etcd endpoints configured".into(),
            ));
        }
        let mut cfg = ureq::Agent::config_builder()
            .timeout_global(Some(settings.timeout))
            .timeout_connect(Some(settings.timeout.min(Duration::from_secs(2))))
            .http_status_as_error(false);
        if settings.ca_file.is_some() || settings.cert_file.is_some() {
            cfg = cfg.tls_config(tls_config(&settings)?);
        }
        Ok(EtcdClient {
            http: cfg.build().into(),
            settings,
            current: 0,
            token: None,
        })
    }

    /// The endpoint requests go to now.
    pub fn endpoint(&self) -> &str {
        &self.settings.endpoints[self.current]
    }

    /// Reads one key.
    pub fn get(&mut self, key: &str) -> Result<GetResult, EtcdError> {
        let v = self.call("/v3/kv/range", json!({ "key": b64(key.as_bytes()) }))?;
        let kv = match v["kvs"].as_array().and_then(|a| a.first()) {
            Some(k) => Some(kv_of(k)?),
            None => None,
        };
        Ok(GetResult {
            revision: int(&v["header"]["revision"]),
            kv,
        })
    }

    /// Reads every key under `prefix`.
    pub fn get_prefix(&mut self, prefix: &str) -> Result<Vec<KeyValue>, EtcdError> {
        let body = json!({
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix.as_bytes())),
        });
        let v = self.call("/v3/kv/range", body)?;
        v["kvs"]
            .as_array()
            .map(|a| a.iter().map(kv_of).collect())
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    /// Writes a key; returns the new store revision.
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<i64, EtcdError> {
        let body = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
        let v = self.call("/v3/kv/put", body)?;
        Ok(int(&v["header"]["revision"]))
    }

    /// Deletes a key; returns how many keys were deleted.
    pub fn delete(&mut self, key: &str) -> Result<i64, EtcdError> {
        let v = self.call("/v3/kv/deleterange", json!({ "key": b64(key.as_bytes()) }))?;
        Ok(int(&v["deleted"]))
    }

    /// The server version (also a cheap check that the gateway exists).
    pub fn version(&mut self) -> Result<String, EtcdError> {
        let v = self.call("/v3/maintenance/status", json!({}))?;
        Ok(v["version"].as_str().unwrap_or("?").to_owned())
    }

    /// Posts to every endpoint in turn, starting with the current one.
    fn call(&mut self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let n = self.settings.endpoints.len();
        let mut last = String::new();
        for _ in 0..n {
            match self.attempt(path, &body, true) {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Next(why) => {
                    last = format!("{}: {why}", self.endpoint());
                    self.current = (self.current + 1) % n;
                }
            }
        }
        Err(EtcdError::Unreachable {
            endpoints: self.settings.endpoints.join(","),
            last,
        })
    }

    fn attempt(&mut self, path: &str, body: &Value, may_reauth: bool) -> Attempt {
        if self.token.is_none()
            && self.settings.username.is_some()
            && path != "/v3/auth/authenticate"
        {
            if let Err(e) = self.authenticate() {
                return match e {
                    EtcdError::Unreachable { last, .. } => Attempt::Next(last),
                    e => Attempt::Fail(e),
                };
            }
        }
        let url = format!("{}{path}", self.endpoint().trim_end_matches('/'));
        let mut req = self.http.post(&url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", t);
        }
        let mut resp = match req.send_json(body) {
            Ok(r) => r,
            Err(e) => return Attempt::Next(e.to_string()),
        };
        let status = resp.status().as_u16();
        let text = match resp.body_mut().read_to_string() {
            Ok(t) => t,
            Err(e) => return Attempt::Next(e.to_string()),
        };
        if status == 404 {
            return Attempt::Fail(EtcdError::NoGateway(self.endpoint().to_owned()));
        }
        let v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) if status >= 500 => return Attempt::Next(format!("HTTP {status}")),
            Err(e) => {
                return Attempt::Fail(EtcdError::BadResponse(format!(
                    "HTTP {status}: {e}: {text:.200}"
                )))
            }
        };
        if status == 200 {
            return Attempt::Done(v);
        }
        let code = int(&v["code"]);
        let message = v["message"]
            .as_str()
            .or_else(|| v["error"].as_str())
            .unwrap_or("")
            .to_owned();
        if status == 401 && may_reauth && self.settings.username.is_some() {
            // The token expired (or the server restarted): once more with a new one.
            self.token = None;
            return self.attempt(path, body, false);
        }
        if message.contains("user name is empty") || status == 401 {
            return Attempt::Fail(EtcdError::Auth(if self.settings.username.is_none() {
                "etcd requires authentication; set etcd.username and etcd.password".into()
            } else {
                message
            }));
        }
        if status >= 500 || message.contains("no leader") || message.contains("timed out") {
            return Attempt::Next(format!("HTTP {status}: {message}"));
        }
        Attempt::Fail(EtcdError::Server { code, message })
    }

    fn authenticate(&mut self) -> Result<(), EtcdError> {
        let (Some(name), Some(password)) = (&self.settings.username, &self.settings.password)
        else {
            return Ok(());
        };
        let body = json!({ "name": name, "password": password });
        match self.attempt("/v3/auth/authenticate", &body, false) {
            Attempt::Done(v) => match v["token"].as_str() {
                Some(t) => {
                    self.token = Some(t.to_owned());
                    Ok(())
                }
                None => Err(EtcdError::Auth("no token in the answer".into())),
            },
            Attempt::Next(why) => Err(EtcdError::Unreachable {
                endpoints: self.endpoint().to_owned(),
                last: why,
            }),
            Attempt::Fail(EtcdError::Server { message, .. }) => Err(EtcdError::Auth(message)),
            Attempt::Fail(e) => Err(e),
        }
    }
}

/// Every certificate in a PEM file.
fn certs_in(path: &PathBuf) -> Result<Vec<ureq::tls::Certificate<'static>>, EtcdError> {
    use ureq::tls::{parse_pem, PemItem};
    let pem =
        std::fs::read(path).map_err(|e| EtcdError::Tls(format!("{}: {e}", path.display())))?;
    let certs: Vec<_> = parse_pem(&pem)
        .filter_map(|i| match i {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(EtcdError::Tls(format!(
            "{}: no certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

fn tls_config(s: &EtcdSettings) -> Result<ureq::tls::TlsConfig, EtcdError> {
    use ureq::tls::{ClientCert, PrivateKey, RootCerts, TlsConfig};
    let mut b = TlsConfig::builder();
    if let Some(ca) = &s.ca_file {
        b = b.root_certs(RootCerts::Specific(Arc::new(certs_in(ca)?)));
    }
    if let (Some(cert), Some(key)) = (&s.cert_file, &s.key_file) {
        let chain = certs_in(cert)?;
        let key_pem =
            std::fs::read(key).map_err(|e| EtcdError::Tls(format!("{}: {e}", key.display())))?;
        let key = PrivateKey::from_pem(&key_pem)
            .map_err(|e| EtcdError::Tls(format!("{}: {e}", key.display())))?;
        b = b.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn int64_fields_parse_from_strings_and_numbers() {
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&json!(7)), 7);
        assert_eq!(int(&Value::Null), 0);
    }

    #[test]
    fn key_values_decode_from_base64() {
        let v = json!({"key": b64(b"/k"), "value": b64(b"[1]"), "mod_revision": "9"});
        let kv = kv_of(&v).unwrap();
        assert_eq!(
            (kv.key.as_str(), &kv.value[..], kv.mod_revision),
            ("/k", &b"[1]"[..], 9)
        );
    }
}
