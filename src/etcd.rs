//! A small synchronous etcd v3 client over the JSON gateway that every etcd ≥ 3.4
//! serves on its client port (`POST /v3/kv/range` and friends), on `ureq`.
//!
//! Why not a gRPC crate: they all need tokio, and the agent has no async runtime. The
//! gateway's quirks handled here: keys and values are base64, int64 fields are JSON
//! strings, zero fields are omitted, the auth token goes raw into `Authorization` (etcd
//! 3.4 rejects a `Bearer` prefix), tokens expire (re-authenticate on 401 and retry once).
//! Several endpoints: the current one is sticky; connection errors, timeouts and 5xx move
//! on to the next.
//!
//! Watches (`POST /v3/watch`) stream newline-delimited JSON over one long HTTP response;
//! [`WatchStream`] reads it with a blocking reader, one bounded line at a time. Several
//! keys are watched on one stream: the request body carries one `create_request` per key.
//! A lease keep-alive (`POST /v3/lease/keepalive`) is one request and one answer: the
//! gateway ends the stream when the request body ends.

use std::io::{BufRead, BufReader, Read};
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
    /// A watch stream ended or broke.
    #[error("etcd watch ended: {0}")]
    WatchEnded(String),
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
    /// The lease the key is attached to (0: none).
    pub lease: i64,
}

/// A single-key read: the key (if present) and the store revision it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetResult {
    /// Store-wide revision of the read.
    pub revision: i64,
    /// The key, if it exists.
    pub kv: Option<KeyValue>,
}

/// Several keys read in one transaction: every answer is of the same store revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Store-wide revision of the read.
    pub revision: i64,
    /// One answer per key asked, in the order asked; `None`: the key does not exist.
    pub kvs: Vec<Option<KeyValue>>,
}

/// One change a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The key and its new value (empty for a delete).
    pub kv: KeyValue,
    /// The key was deleted.
    pub deleted: bool,
}

/// One message of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMsg {
    /// A watcher was created (one per key asked).
    Created,
    /// Changes, all at or below `revision`.
    Events {
        /// Store revision of the message.
        revision: i64,
        /// The changes.
        events: Vec<WatchEvent>,
    },
    /// Nothing changed up to `revision` (a progress notification).
    Progress {
        /// Store revision of the message.
        revision: i64,
    },
    /// etcd ended the watch: the start revision was compacted (`compact_revision` > 0),
    /// or another reason.
    Canceled {
        /// The oldest revision etcd still has, when compaction was the reason.
        compact_revision: i64,
        /// etcd's reason, if it gave one.
        reason: String,
    },
}

/// The longest line a watch stream may send: a value is at most 1.5 MiB by etcd's
/// default request limit, base64 makes it 2 MiB; several events may share a line.
const MAX_WATCH_LINE: usize = 32 << 20;

/// A watch: the open HTTP response of `POST /v3/watch`. Not `Sync`: one thread reads it.
pub struct WatchStream {
    reader: BufReader<Box<dyn Read + Send>>,
    line: Vec<u8>,
    max_line: usize,
}

impl WatchStream {
    /// A watch stream read from `reader` (the body of a watch response), refusing a line
    /// longer than `max_line` bytes. [`EtcdClient::watch`] opens one on the HTTP
    /// response; tests and the fuzz targets open one on any bytes.
    pub fn from_reader(reader: Box<dyn Read + Send>, max_line: usize) -> WatchStream {
        WatchStream {
            reader: BufReader::with_capacity(64 << 10, reader),
            line: Vec::new(),
            max_line,
        }
    }

    /// Blocks for the next message. `Err` when the stream ended, broke or said something
    /// that is not a watch message; the watch is over then.
    pub fn next_msg(&mut self) -> Result<WatchMsg, EtcdError> {
        loop {
            self.line.clear();
            let n = read_line_bounded(&mut self.reader, &mut self.line, self.max_line)
                .map_err(|e| EtcdError::WatchEnded(e.to_string()))?;
            if n == 0 {
                return Err(EtcdError::WatchEnded("the stream ended".into()));
            }
            if self.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let v: Value = serde_json::from_slice(&self.line)
                .map_err(|e| EtcdError::BadResponse(format!("watch stream: {e}")))?;
            return watch_msg(&v);
        }
    }
}

/// Reads up to and including the next `\n` into `buf`, failing past `max` bytes.
fn read_line_bounded<R: BufRead>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let (done, used) = {
            let avail = r.fill_buf()?;
            if avail.is_empty() {
                return Ok(total);
            }
            match memchr::memchr(b'\n', avail) {
                Some(i) => {
                    buf.extend_from_slice(&avail[..=i]);
                    (true, i + 1)
                }
                None => {
                    buf.extend_from_slice(avail);
                    (false, avail.len())
                }
            }
        };
        r.consume(used);
        total += used;
        // Checked before `done` too: whether a long line fails must not depend on how
        // much of it one read brought (the fuzz target `etcd_watch` found that).
        if total > max {
            return Err(std::io::Error::other(format!(
                "a watch message longer than {max} bytes"
            )));
        }
        if done {
            return Ok(total);
        }
    }
}

/// What one line of a watch stream says.
fn watch_msg(v: &Value) -> Result<WatchMsg, EtcdError> {
    if let Some(e) = v.get("error") {
        let message = e["message"].as_str().unwrap_or("").to_owned();
        let code = int(&e["grpc_code"]);
        if code == 16 || int(&e["http_code"]) == 401 {
            return Err(EtcdError::Auth(message));
        }
        return Err(EtcdError::Server { code, message });
    }
    let r = v.get("result").ok_or_else(|| {
        EtcdError::BadResponse(format!("watch stream: no result in {}", excerpt(v)))
    })?;
    let revision = int(&r["header"]["revision"]);
    if r["canceled"].as_bool() == Some(true) {
        return Ok(WatchMsg::Canceled {
            compact_revision: int(&r["compact_revision"]),
            reason: r["cancel_reason"].as_str().unwrap_or("").to_owned(),
        });
    }
    if int(&r["compact_revision"]) > 0 {
        return Ok(WatchMsg::Canceled {
            compact_revision: int(&r["compact_revision"]),
            reason: String::new(),
        });
    }
    if r["created"].as_bool() == Some(true) {
        return Ok(WatchMsg::Created);
    }
    match r["events"].as_array() {
        Some(evs) if !evs.is_empty() => {
            let events = evs
                .iter()
                .map(|e| {
                    Ok(WatchEvent {
                        kv: kv_of(&e["kv"])?,
                        deleted: e["type"].as_str() == Some("DELETE"),
                    })
                })
                .collect::<Result<Vec<_>, EtcdError>>()?;
            Ok(WatchMsg::Events { revision, events })
        }
        _ => Ok(WatchMsg::Progress { revision }),
    }
}

/// The start of an answer, for an error message: at most 200 characters. (`{v:.200}`
/// does not cut a `Value`: its `Display` ignores the precision, and a proxy's answer can
/// be megabytes; the fuzz target `etcd_answer` found that.)
fn excerpt(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// The revision in an answer's header; an answer without one is not from etcd (a proxy's
/// error page, a truncated body) and must not be read as "the key does not exist".
fn header_revision(v: &Value) -> Result<i64, EtcdError> {
    match int(&v["header"]["revision"]) {
        r if r > 0 => Ok(r),
        _ => Err(EtcdError::BadResponse(format!(
            "an answer without a header revision: {}",
            excerpt(v)
        ))),
    }
}

/// A single-key range answer ([`EtcdClient::get`]).
pub fn get_answer(v: &Value) -> Result<GetResult, EtcdError> {
    let revision = header_revision(v)?;
    let kv = match v["kvs"].as_array().and_then(|a| a.first()) {
        Some(k) => Some(kv_of(k)?),
        None => None,
    };
    Ok(GetResult { revision, kv })
}

/// A read-only transaction's answer to `keys` range requests ([`EtcdClient::get_all`]).
pub fn txn_answer(v: &Value, keys: usize) -> Result<Snapshot, EtcdError> {
    let revision = header_revision(v)?;
    let empty = Vec::new();
    let answers = v["responses"].as_array().unwrap_or(&empty);
    if answers.len() != keys {
        return Err(EtcdError::BadResponse(format!(
            "a read of {keys} keys answered {} of them",
            answers.len()
        )));
    }
    let kvs = answers
        .iter()
        .map(|a| {
            match a["response_range"]["kvs"]
                .as_array()
                .and_then(|k| k.first())
            {
                Some(k) => kv_of(k).map(Some),
                None => Ok(None),
            }
        })
        .collect::<Result<Vec<_>, EtcdError>>()?;
    Ok(Snapshot { revision, kvs })
}

/// One page of a prefix read ([`EtcdClient::get_prefix`]): its revision, its keys,
/// and whether more follow.
pub fn range_page(v: &Value) -> Result<(i64, Vec<KeyValue>, bool), EtcdError> {
    let at = header_revision(v)?;
    let page: Vec<KeyValue> = match v["kvs"].as_array() {
        Some(a) => a.iter().map(kv_of).collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok((at, page, v["more"].as_bool() == Some(true)))
}

/// A lease grant's answer: the lease ID ([`EtcdClient::lease_grant`]).
pub fn lease_grant_answer(v: &Value) -> Result<i64, EtcdError> {
    match int(&v["ID"]) {
        0 => Err(EtcdError::BadResponse(format!(
            "a lease grant without an ID: {}",
            excerpt(v)
        ))),
        id => Ok(id),
    }
}

/// A keep-alive's answer: whether the lease still lives ([`EtcdClient::lease_keepalive`]).
pub fn keepalive_answer(v: &Value) -> Result<bool, EtcdError> {
    if let Some(e) = v.get("error") {
        return Err(EtcdError::Server {
            code: int(&e["grpc_code"]),
            message: e["message"].as_str().unwrap_or("").to_owned(),
        });
    }
    Ok(int(&v["result"]["TTL"]) > 0)
}

/// The client. Not `Sync`: one thread owns it.
pub struct EtcdClient {
    http: ureq::Agent,
    settings: EtcdSettings,
    current: usize,
    token: Option<String>,
    /// Requests that timed out in a row (see [`timeout_after`]).
    timeouts: u32,
}

/// A request that timed out doubles the next one's timeout, up to 2^this times the
/// configured one (3 s → 12 s); the first answer resets it. An etcd that is slow (a
/// fleet that started or came back together) gets the time to answer, instead of the
/// same request again from every host: each abandoned request is work etcd still does,
/// and a fleet that abandons them all makes the queue that makes the timeouts.
///
/// Only the first member a call tries gets the longer timeout; the others (a failover
/// within the call) get the configured one. So one call holds its thread (the config
/// thread, which a stop waits for) at most 12 + 3 + 3 = 18 s with three members that
/// all hang, and 18 s + the 10 s flush stays inside the unit's 30 s stop limit.
const TIMEOUT_DOUBLINGS_MAX: u32 = 2;

/// The timeout of a request after `timeouts` in a row.
fn timeout_after(base: Duration, timeouts: u32) -> Duration {
    base * (1u32 << timeouts.min(TIMEOUT_DOUBLINGS_MAX))
}

/// The timeout of the `nth` member a call tries (0: the first), after `timeouts` in a
/// row: only the first waits longer (see [`TIMEOUT_DOUBLINGS_MAX`]).
fn timeout_of_try(base: Duration, timeouts: u32, nth: usize) -> Duration {
    if nth == 0 {
        timeout_after(base, timeouts)
    } else {
        base
    }
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
        lease: int(&v["lease"]),
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
            .http_status_as_error(false)
            // An agent talks to etcd every 20-30 s (keep-alive, re-read): keep its
            // connection that long instead of a new TCP (and TLS) handshake each time.
            .max_idle_age(Duration::from_secs(120));
        if settings.ca_file.is_some() || settings.cert_file.is_some() {
            cfg = cfg.tls_config(tls_config(&settings)?);
        }
        Ok(EtcdClient {
            http: cfg.build().into(),
            settings,
            current: 0,
            token: None,
            timeouts: 0,
        })
    }

    /// A second client for another thread: the same settings, connection pool, token
    /// (no new authentication) and current endpoint.
    pub fn fork(&self) -> EtcdClient {
        EtcdClient {
            http: self.http.clone(),
            settings: self.settings.clone(),
            current: self.current,
            token: self.token.clone(),
            timeouts: 0,
        }
    }

    /// Whether the last request timed out (etcd is there but slow: a caller should not
    /// make it worse by retrying soon). Counted from the transport's own timeout error,
    /// not from an error's text.
    pub fn slow(&self) -> bool {
        self.timeouts > 0
    }

    /// The endpoint requests go to now.
    pub fn endpoint(&self) -> &str {
        &self.settings.endpoints[self.current]
    }

    /// Starts with endpoint `seed % n` instead of the first: a fleet whose agents all list
    /// the endpoints in one order spreads its reads and watches over the members.
    pub fn spread(&mut self, seed: u64) {
        self.current = (seed % self.settings.endpoints.len() as u64) as usize;
    }

    /// Reads one key (linearizable).
    pub fn get(&mut self, key: &str) -> Result<GetResult, EtcdError> {
        let v = self.call("/v3/kv/range", json!({ "key": b64(key.as_bytes()) }))?;
        get_answer(&v)
    }

    /// Reads several keys in one read-only transaction, so that all answers are of one
    /// revision. `serializable`: answered by the member asked, from its own copy (cheap,
    /// possibly behind); otherwise linearizable (confirmed with the leader).
    pub fn get_all(&mut self, keys: &[String], serializable: bool) -> Result<Snapshot, EtcdError> {
        self.get_all_with(keys, serializable, keys.len())
    }

    /// [`EtcdClient::get_all`], the keys from index `keys_only_from` on without their
    /// values (their revisions only: cheap to compare with what one wrote).
    pub fn get_all_with(
        &mut self,
        keys: &[String],
        serializable: bool,
        keys_only_from: usize,
    ) -> Result<Snapshot, EtcdError> {
        let ops: Vec<Value> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                json!({ "request_range": {
                    "key": b64(k.as_bytes()),
                    "serializable": serializable,
                    "keys_only": i >= keys_only_from,
                } })
            })
            .collect();
        let v = self.call("/v3/kv/txn", json!({ "success": ops }))?;
        txn_answer(&v, keys.len())
    }

    /// Grants a lease of `ttl_secs`; returns its ID.
    pub fn lease_grant(&mut self, ttl_secs: i64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/grant", json!({ "TTL": ttl_secs.to_string() }))?;
        lease_grant_answer(&v)
    }

    /// Renews a lease. `false`: the lease is gone (expired or revoked). Creates no revision.
    pub fn lease_keepalive(&mut self, id: i64) -> Result<bool, EtcdError> {
        let v = self.call("/v3/lease/keepalive", json!({ "ID": id.to_string() }))?;
        keepalive_answer(&v)
    }

    /// Writes a key attached to a lease; returns the new store revision. A lease that is
    /// gone fails with code 5 (`requested lease not found`).
    pub fn put_leased(&mut self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let body =
            json!({ "key": b64(key.as_bytes()), "value": b64(value), "lease": lease.to_string() });
        let v = self.call("/v3/kv/put", body)?;
        Ok(int(&v["header"]["revision"]))
    }

    /// Opens a watch on `keys` from `start_revision` on the current endpoint. The stream
    /// ends by itself after `max_time`, so a connection that silently died (or one the
    /// owner gave up on) is never waited on for longer than that.
    pub fn watch(
        &mut self,
        keys: &[String],
        start_revision: i64,
        max_time: Duration,
    ) -> Result<WatchStream, EtcdError> {
        if self.token.is_none() && self.settings.username.is_some() {
            self.authenticate(self.settings.timeout)?;
        }
        let body: String = keys
            .iter()
            .map(|k| {
                json!({ "create_request": { "key": b64(k.as_bytes()), "start_revision": start_revision.to_string() } })
                    .to_string()
                    + "\n"
            })
            .collect();
        let url = format!("{}/v3/watch", self.endpoint().trim_end_matches('/'));
        let mut req = self
            .http
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("Authorization", t);
        }
        let resp = req
            .config()
            .timeout_global(Some(max_time))
            .build()
            .send(body.as_str())
            .map_err(|e| EtcdError::Unreachable {
                endpoints: self.endpoint().to_owned(),
                last: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Err(EtcdError::NoGateway(self.endpoint().to_owned()));
        }
        if status == 401 {
            self.token = None;
            return Err(EtcdError::Auth("the watch was refused (HTTP 401)".into()));
        }
        if status != 200 {
            return Err(EtcdError::WatchEnded(format!("HTTP {status}")));
        }
        let reader: Box<dyn Read + Send> = Box::new(resp.into_body().into_reader());
        Ok(WatchStream::from_reader(reader, MAX_WATCH_LINE))
    }

    /// Reads every key under `prefix`, in pages of 100 keys all at the first page's
    /// revision (one answer for a whole fleet would pass the 10 MiB a response may be).
    pub fn get_prefix(&mut self, prefix: &str) -> Result<Vec<KeyValue>, EtcdError> {
        let end = b64(&prefix_end(prefix.as_bytes()));
        let mut from = prefix.as_bytes().to_vec();
        let mut out = Vec::new();
        let mut revision = 0i64;
        // Bounded: each page moves `from` past its last key; 10^6 pages is 10^8 keys.
        for _ in 0..1_000_000 {
            let mut body = json!({ "key": b64(&from), "range_end": end, "limit": "100" });
            if revision > 0 {
                body["revision"] = json!(revision.to_string());
            }
            let v = self.call("/v3/kv/range", body)?;
            let (at, page, more) = range_page(&v)?;
            if revision == 0 {
                revision = at;
            }
            if let Some(last) = page.last() {
                from = last.key.as_bytes().to_vec();
                from.push(0);
            }
            let empty = page.is_empty();
            out.extend(page);
            if !more || empty {
                return Ok(out);
            }
        }
        Err(EtcdError::BadResponse(format!(
            "{prefix}: more than 10^8 keys"
        )))
    }

    /// Writes a key; returns the new store revision (the key's `mod_revision`).
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<i64, EtcdError> {
        let body = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
        let v = self.call("/v3/kv/put", body)?;
        Ok(int(&v["header"]["revision"]))
    }

    /// Compacts the history up to `revision` (operator tooling and tests).
    pub fn compact(&mut self, revision: i64) -> Result<(), EtcdError> {
        self.call(
            "/v3/kv/compaction",
            json!({ "revision": revision.to_string() }),
        )?;
        Ok(())
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
        for nth in 0..n {
            let timeout = timeout_of_try(self.settings.timeout, self.timeouts, nth);
            match self.attempt(path, &body, true, timeout) {
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

    /// One request to the current endpoint, with `timeout`.
    fn attempt(
        &mut self,
        path: &str,
        body: &Value,
        may_reauth: bool,
        timeout: Duration,
    ) -> Attempt {
        if self.token.is_none()
            && self.settings.username.is_some()
            && path != "/v3/auth/authenticate"
        {
            if let Err(e) = self.authenticate(timeout) {
                return match e {
                    EtcdError::Unreachable { last, .. } => Attempt::Next(last),
                    e => Attempt::Fail(e),
                };
            }
        }
        let url = format!("{}{path}", self.endpoint().trim_end_matches('/'));
        let mut req = self.http.post(&url);
        if timeout != self.settings.timeout {
            req = req.config().timeout_global(Some(timeout)).build();
        }
        if let Some(t) = &self.token {
            req = req.header("Authorization", t);
        }
        let mut resp = match req.send_json(body) {
            Ok(r) => r,
            Err(e) => {
                if matches!(e, ureq::Error::Timeout(_)) {
                    self.timeouts = self.timeouts.saturating_add(1);
                }
                return Attempt::Next(e.to_string());
            }
        };
        let status = resp.status().as_u16();
        let text = match resp.body_mut().read_to_string() {
            Ok(t) => t,
            Err(e) => {
                if matches!(e, ureq::Error::Timeout(_)) {
                    self.timeouts = self.timeouts.saturating_add(1);
                }
                return Attempt::Next(e.to_string());
            }
        };
        self.timeouts = 0; // it answered
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
            return self.attempt(path, body, false, timeout);
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

    fn authenticate(&mut self, timeout: Duration) -> Result<(), EtcdError> {
        let (Some(name), Some(password)) = (&self.settings.username, &self.settings.password)
        else {
            return Ok(());
        };
        let body = json!({ "name": name, "password": password });
        match self.attempt("/v3/auth/authenticate", &body, false, timeout) {
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
fn certs_in(path: &std::path::Path) -> Result<Vec<ureq::tls::Certificate<'static>>, EtcdError> {
    crate::pem::certificates(path).map_err(EtcdError::Tls)
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
    fn timeouts_in_a_row_double_the_next_timeout_up_to_four_times() {
        let base = Duration::from_secs(3);
        let got: Vec<u64> = (0..6).map(|n| timeout_after(base, n).as_secs()).collect();
        assert_eq!(got, [3, 6, 12, 12, 12, 12]);
    }

    #[test]
    fn only_the_first_member_a_call_tries_waits_longer() {
        let base = Duration::from_secs(3);
        // Three members that all hang, after many timeouts in a row: 12 + 3 + 3 s.
        let call: Duration = (0..3).map(|nth| timeout_of_try(base, 9, nth)).sum();
        assert_eq!(call, Duration::from_secs(18));
        assert!(
            call + Duration::from_secs(10) < Duration::from_secs(30),
            "a stop (flush 10 s) fits the unit's TimeoutStopSec=30"
        );
        // No timeout before: every member gets the configured one.
        assert!((0..3).all(|nth| timeout_of_try(base, 0, nth) == base));
    }

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
    fn watch_lines_parse_into_messages() {
        let created = json!({"result":{"header":{"revision":"2"},"created":true}});
        assert_eq!(watch_msg(&created).unwrap(), WatchMsg::Created);
        let put = json!({"result":{"header":{"revision":"3"},"events":[{"kv":{"key":b64(b"/a"),"mod_revision":"3","value":b64(b"y")}}]}});
        let WatchMsg::Events { revision, events } = watch_msg(&put).unwrap() else {
            panic!("events expected");
        };
        assert_eq!(
            (revision, events[0].kv.value.as_slice(), events[0].deleted),
            (3, &b"y"[..], false)
        );
        let del = json!({"result":{"header":{"revision":"5"},"watch_id":"1","events":[{"type":"DELETE","kv":{"key":b64(b"/b"),"mod_revision":"5"}}]}});
        let WatchMsg::Events { events, .. } = watch_msg(&del).unwrap() else {
            panic!("events expected");
        };
        assert!(events[0].deleted && events[0].kv.key == "/b");
        let compacted =
            json!({"result":{"header":{"raft_term":"2"},"canceled":true,"compact_revision":"307"}});
        assert_eq!(
            watch_msg(&compacted).unwrap(),
            WatchMsg::Canceled {
                compact_revision: 307,
                reason: String::new()
            }
        );
        let progress = json!({"result":{"header":{"revision":"9"}}});
        assert_eq!(
            watch_msg(&progress).unwrap(),
            WatchMsg::Progress { revision: 9 }
        );
        let denied =
            json!({"error":{"grpc_code":16,"http_code":401,"message":"invalid auth token"}});
        assert!(matches!(watch_msg(&denied), Err(EtcdError::Auth(_))));
        assert!(matches!(
            watch_msg(&json!({"x":1})),
            Err(EtcdError::BadResponse(_))
        ));
    }

    #[test]
    fn an_answer_without_a_header_is_not_an_absent_key() {
        assert!(header_revision(&json!({})).is_err());
        assert!(header_revision(&json!({"kvs": []})).is_err());
        assert_eq!(
            header_revision(&json!({"header":{"revision":"4"}})).unwrap(),
            4
        );
    }

    #[test]
    fn errors_quote_at_most_200_characters_of_an_answer() {
        // Found by the fuzz target `etcd_answer`: the whole answer was quoted.
        let big = json!({ "kvs": [{ "key": "x".repeat(10_000) }], "é": "ü".repeat(500) });
        for e in [
            header_revision(&big).unwrap_err(),
            lease_grant_answer(&big).unwrap_err(),
            watch_msg(&big).unwrap_err(),
        ] {
            let msg = e.to_string();
            assert!(msg.chars().count() < 300, "{} chars: {msg:.100}", msg.len());
        }
        assert_eq!(excerpt(&json!({"a": 1})), r#"{"a":1}"#);
    }

    #[test]
    fn watch_lines_are_bounded() {
        let mut r = BufReader::with_capacity(4, &b"abc\ndefghijklmnop\nq"[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line_bounded(&mut r, &mut buf, 8).unwrap(), 4);
        assert_eq!(buf, b"abc\n");
        buf.clear();
        assert!(
            read_line_bounded(&mut r, &mut buf, 8).is_err(),
            "13 bytes > 8"
        );
        // The same line arriving in one read fails the same way.
        let mut r = BufReader::new(&b"defghijklmnop\nq"[..]);
        buf.clear();
        assert!(
            read_line_bounded(&mut r, &mut buf, 8).is_err(),
            "in one read"
        );
        let mut r = BufReader::new(&b"1234567\n"[..]);
        buf.clear();
        assert_eq!(
            read_line_bounded(&mut r, &mut buf, 8).unwrap(),
            8,
            "8 bytes fit 8"
        );
        let mut r = BufReader::new(&b"tail"[..]);
        buf.clear();
        assert_eq!(
            read_line_bounded(&mut r, &mut buf, 8).unwrap(),
            4,
            "the last line without a newline"
        );
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
