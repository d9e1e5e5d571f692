//! The `webhook` block's HTTP client, guarded against server-side request forgery.
//!
//! Every destination is checked *after* DNS resolution, and the connection goes only to the
//! addresses that were checked: the client's DNS resolver ([`GuardedResolver`]) is the one
//! that refuses, so there is no second lookup an attacker's name server could answer
//! differently (DNS rebinding). IP-literal URLs never reach a resolver, so they are checked
//! before each request. Redirects are followed here, not by reqwest, so every hop goes
//! through the same checks. Loopback, private, link-local (cloud metadata included),
//! CGNAT, multicast, documentation and other non-public addresses are refused unless the
//! server's [`EgressPolicy`] allow-lists them by network or by host name.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::retry::{BlockError, ErrorClass, RetryPolicy};

/// The largest response body read; a larger one fails the block.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Response header values longer than this are cut to it.
pub const MAX_HEADER_VALUE_BYTES: usize = 8 * 1024;
/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 5;
/// One attempt's limit when the block's retry policy sets none.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Sent unless the block sets its own `user-agent`.
pub const DEFAULT_USER_AGENT: &str = "resonant-webhook/0.1";
/// How much of an error response's body goes into the error message.
const ERROR_BODY_CHARS: usize = 512;

/// Request headers a block may not set: the client owns framing and connection management.
const FORBIDDEN_REQUEST_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

// ---------------------------------------------------------------------------------------
// Egress policy
// ---------------------------------------------------------------------------------------

/// One allow-list entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowRule {
    /// An IP network; a bare address is a /32 (or /128).
    Network {
        /// The network address (host bits cleared).
        addr: IpAddr,
        /// Prefix length in bits.
        prefix: u8,
    },
    /// A host name, lower-case without a trailing dot; every address it resolves to is allowed.
    Host(String),
}

impl AllowRule {
    /// Reads `"10.0.0.0/8"`, `"127.0.0.1"`, `"::1/128"` or `"hooks.internal"`.
    pub fn parse(entry: &str) -> Result<AllowRule, String> {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err("empty entry".into());
        }
        if let Some((addr, prefix)) = entry.split_once('/') {
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("{addr:?} is not an IP address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("prefix length must be 0–{max}"))?;
            return Ok(AllowRule::Network {
                addr: mask(addr, prefix),
                prefix,
            });
        }
        if let Ok(addr) = entry.trim_start_matches('[').trim_end_matches(']').parse() {
            let prefix = if matches!(addr, IpAddr::V4(_)) {
                32
            } else {
                128
            };
            return Ok(AllowRule::Network { addr, prefix });
        }
        let host = normalise_host(entry);
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid {
            return Err(format!(
                "{entry:?} is neither an IP network nor a host name"
            ));
        }
        Ok(AllowRule::Host(host))
    }

    fn allows(&self, host: Option<&str>, ip: IpAddr) -> bool {
        match self {
            AllowRule::Host(name) => host.is_some_and(|h| normalise_host(h) == *name),
            AllowRule::Network { addr, prefix } => mask(ip, *prefix) == *addr,
        }
    }
}

/// Which destinations webhook blocks may reach besides public addresses.
#[derive(Clone, Debug, Default)]
pub struct EgressPolicy {
    /// Networks and host names allowed even though they are not public.
    pub allow: Vec<AllowRule>,
}

impl EgressPolicy {
    /// Reads allow-list entries (see [`AllowRule::parse`]); an error names the entry.
    pub fn parse(entries: &[String]) -> Result<EgressPolicy, String> {
        let allow = entries
            .iter()
            .map(|e| AllowRule::parse(e).map_err(|m| format!("egress allow-list entry {e:?}: {m}")))
            .collect::<Result<_, _>>()?;
        Ok(EgressPolicy { allow })
    }

    /// Whether a connection to `ip` (reached through the name `host`, if any) is allowed;
    /// the error says why not, naming the address.
    pub fn check(&self, host: Option<&str>, ip: IpAddr) -> Result<(), String> {
        let canonical = ip.to_canonical();
        if self.allow.iter().any(|r| r.allows(host, canonical)) {
            return Ok(());
        }
        let Some(reason) = forbidden_reason(canonical) else {
            return Ok(());
        };
        let shown = if canonical == ip {
            ip.to_string()
        } else {
            format!("{ip} ({canonical})")
        };
        let via = match host {
            Some(h) => format!("{h} resolves to {shown}, "),
            None => format!("{shown} is "),
        };
        Err(format!(
            "refused: {via}a {reason} address, which webhooks may not reach (not in the server's egress allow-list)"
        ))
    }
}

fn normalise_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// Why `ip` (already canonical: IPv4-mapped IPv6 unwrapped) is not a public destination.
pub fn forbidden_reason(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4).map(str::to_owned),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "unspecified (0.0.0.0/8)",
        (127, _, _) => "loopback",
        (10, _, _) => "private (RFC 1918)",
        (172, 16..=31, _) => "private (RFC 1918)",
        (192, 168, _) => "private (RFC 1918)",
        (169, 254, 169) if ip.octets()[3] == 254 => "link-local (cloud metadata)",
        (169, 254, _) => "link-local",
        (100, 64..=127, _) => "shared (CGNAT 100.64.0.0/10)",
        (192, 0, 0) => "IETF protocol assignment",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (192, 88, 99) => "6to4 relay anycast",
        (224..=239, _, _) => "multicast",
        (255, 255, 255) if ip.is_broadcast() => "broadcast",
        (240..=255, _, _) => "reserved",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<String> {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    let reason = if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if s[..6] == [0; 6] {
        "IPv4-compatible (deprecated)"
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64: as good as the IPv4 address inside.
        let v4 = embedded(s[6], s[7]);
        return forbidden_v4(v4).map(|r| format!("NAT64 ({v4}: {r})"));
    } else if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        "NAT64 local-use"
    } else if s[0] & 0xfe00 == 0xfc00 {
        "unique-local (private)"
    } else if s[0] & 0xffc0 == 0xfe80 {
        "link-local"
    } else if s[0] & 0xffc0 == 0xfec0 {
        "site-local"
    } else if s[0] & 0xff00 == 0xff00 {
        "multicast"
    } else if (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] == 0x3fff && s[1] < 0x1000) {
        "documentation"
    } else if s[0] == 0x2002 {
        // 6to4: as good as the IPv4 address inside.
        let v4 = embedded(s[1], s[2]);
        return forbidden_v4(v4).map(|r| format!("6to4 ({v4}: {r})"));
    } else if s[0] == 0x2001 && s[1] < 0x0200 {
        "IETF protocol assignment (Teredo, benchmarking, ORCHID)"
    } else if s[0] & 0xe000 != 0x2000 {
        "non-global (outside 2000::/3)"
    } else {
        return None;
    };
    Some(reason.to_owned())
}

// ---------------------------------------------------------------------------------------
// Resolution
// ---------------------------------------------------------------------------------------

/// A stand-in for DNS (tests): a name's addresses, none if it does not resolve.
pub type LookupFn = Arc<dyn Fn(&str) -> Vec<IpAddr> + Send + Sync>;

#[derive(Clone)]
enum Lookup {
    System,
    Custom(LookupFn),
}

impl Lookup {
    async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let addrs = match self {
            Lookup::System => tokio::net::lookup_host((host, 0))
                .await
                .map_err(|e| format!("could not resolve {host}: {e}"))?
                .map(|a| a.ip())
                .collect(),
            Lookup::Custom(f) => f(host),
        };
        if addrs.is_empty() {
            return Err(format!("could not resolve {host}: no addresses"));
        }
        Ok(addrs)
    }
}

/// A destination the egress policy refused (travels through reqwest's error chain).
#[derive(Debug)]
struct Refusal(String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Refusal {}

/// A name that did not resolve.
#[derive(Debug)]
struct LookupFailure(String);

impl fmt::Display for LookupFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for LookupFailure {}

/// The webhook client's DNS resolver: resolves, checks every address against the policy,
/// and hands reqwest only checked addresses (all of a name's addresses, or none).
pub struct GuardedResolver {
    policy: Arc<EgressPolicy>,
    lookup: Lookup,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let lookup = self.lookup.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = lookup
                .lookup(&host)
                .await
                .map_err(|m| Box::new(LookupFailure(m)) as Box<dyn StdError + Send + Sync>)?;
            for ip in &addrs {
                policy
                    .check(Some(&host), *ip)
                    .map_err(|m| Box::new(Refusal(m)) as Box<dyn StdError + Send + Sync>)?;
            }
            // Port 0 is replaced by the URL's port (or the scheme's).
            let checked: Vec<SocketAddr> = addrs
                .into_iter()
                .map(|ip| SocketAddr::new(ip.to_canonical(), 0))
                .collect();
            Ok(Box::new(checked.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

// ---------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------

/// A webhook block's request, already templated by the engine.
#[derive(Clone, Debug)]
pub struct WebhookRequest {
    /// The HTTP method.
    pub method: Method,
    /// An `http` or `https` URL.
    pub url: String,
    /// Extra request headers, in order; see [`FORBIDDEN_REQUEST_HEADERS`] for refused names.
    pub headers: Vec<(String, String)>,
    /// The request body, if any.
    pub body: Option<String>,
}

/// What the other side answered (only 2xx; other statuses are errors).
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookResponse {
    /// The final response's status, after redirects.
    pub status: u16,
    /// Response headers by lower-case name; repeated headers joined with `", "`, values cut
    /// to [`MAX_HEADER_VALUE_BYTES`].
    pub headers: serde_json::Map<String, Value>,
    /// The parsed body if the content type is JSON and it parses, else the body as a string.
    pub body: Value,
    /// From sending the first request to reading the final body, redirects included.
    pub duration_ms: u64,
}

/// The webhook block's HTTP client; cheap to clone.
#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    policy: Arc<EgressPolicy>,
}

impl fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookClient")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl WebhookClient {
    /// A client resolving names through the system resolver.
    pub fn new(policy: EgressPolicy) -> WebhookClient {
        WebhookClient::build(policy, Lookup::System)
    }

    /// A client resolving names through `lookup` instead of DNS (tests: rebinding, names
    /// resolving to private addresses).
    pub fn with_resolver(policy: EgressPolicy, lookup: LookupFn) -> WebhookClient {
        WebhookClient::build(policy, Lookup::Custom(lookup))
    }

    fn build(policy: EgressPolicy, lookup: Lookup) -> WebhookClient {
        let policy = Arc::new(policy);
        let resolver = Arc::new(GuardedResolver {
            policy: policy.clone(),
            lookup,
        });
        let http = reqwest::Client::builder()
            .dns_resolver(resolver)
            // A proxy would be resolved and connected to instead of the checked destination.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("the webhook HTTP client builds (rustls, no custom certificates)");
        WebhookClient { http, policy }
    }

    /// The policy this client enforces.
    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// One attempt: resolves, checks every address, connects only to checked addresses,
    /// follows up to [`MAX_REDIRECTS`] redirects itself re-checking each hop; times out after
    /// `timeout` (redirects and reading the body included).
    pub async fn send(
        &self,
        req: &WebhookRequest,
        timeout: Duration,
    ) -> Result<WebhookResponse, BlockError> {
        let started = Instant::now();
        match tokio::time::timeout(timeout, self.send_inner(req)).await {
            Ok(Ok(mut resp)) => {
                resp.duration_ms = started.elapsed().as_millis() as u64;
                Ok(resp)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BlockError::new(
                ErrorClass::Timeout,
                format!("webhook timed out after {} ms", timeout.as_millis()),
            )),
        }
    }

    async fn send_inner(&self, req: &WebhookRequest) -> Result<WebhookResponse, BlockError> {
        let mut url = Url::parse(req.url.trim()).map_err(|e| {
            BlockError::new(ErrorClass::Invalid, format!("invalid webhook URL: {e}"))
        })?;
        let mut headers = request_headers(&req.headers)?;
        let mut method = req.method.clone();
        let mut body = req.body.clone();
        let mut hops = 0;
        loop {
            self.check_url(&url)?;
            let host = url.host_str().unwrap_or_default().to_owned();
            let mut builder = self
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(b) = &body {
                builder = builder.body(b.clone());
            }
            let resp = builder.send().await.map_err(|e| send_error(e, &host))?;
            let status = resp.status();
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .filter(|_| is_followed_redirect(status))
                .cloned();
            let Some(location) = location else {
                return read_response(resp, &host).await;
            };
            if hops == MAX_REDIRECTS {
                return Err(BlockError::new(
                    ErrorClass::Client,
                    format!("webhook followed {MAX_REDIRECTS} redirects and was redirected again"),
                ));
            }
            hops += 1;
            let next = location
                .to_str()
                .ok()
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| {
                    BlockError::new(
                        ErrorClass::Client,
                        format!("{host} answered {status} with an invalid Location"),
                    )
                })?;
            // As browsers do: 303 (and 301/302 after a POST) become a GET without a body.
            let to_get = match status {
                StatusCode::SEE_OTHER => method != Method::HEAD,
                StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND => method == Method::POST,
                _ => false,
            };
            if to_get {
                method = Method::GET;
                body = None;
                for name in [
                    "content-type",
                    "content-encoding",
                    "content-language",
                    "content-location",
                ] {
                    headers.remove(name);
                }
            }
            // Credentials are not handed to another origin.
            if next.origin() != url.origin() {
                for name in ["authorization", "proxy-authorization", "cookie"] {
                    headers.remove(name);
                }
            }
            drop(resp);
            url = next;
        }
    }

    /// The scheme, and the address itself when the URL's host is an IP literal (reqwest
    /// connects to those without asking the resolver).
    fn check_url(&self, url: &Url) -> Result<(), BlockError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(BlockError::new(
                ErrorClass::Refused,
                format!(
                    "refused: only http and https URLs may be called (got {}:)",
                    url.scheme()
                ),
            ));
        }
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            return Err(BlockError::new(
                ErrorClass::Invalid,
                "invalid webhook URL: no host",
            ));
        };
        // The URL parser has already turned every IPv4 spelling (0x7f.1, 2130706433) into
        // dotted form; IPv6 comes bracketed.
        let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        else {
            return Ok(());
        };
        self.policy
            .check(None, ip)
            .map_err(|m| BlockError::new(ErrorClass::Refused, m))
    }
}

fn is_followed_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

fn request_headers(list: &[(String, String)]) -> Result<HeaderMap, BlockError> {
    let mut headers = HeaderMap::new();
    for (name, value) in list {
        let lower = name.trim().to_ascii_lowercase();
        if FORBIDDEN_REQUEST_HEADERS.contains(&lower.as_str()) {
            return Err(BlockError::new(
                ErrorClass::Invalid,
                format!("the {lower} header is set by the HTTP client and may not be set by a webhook block"),
            ));
        }
        let name = HeaderName::from_bytes(lower.as_bytes()).map_err(|_| {
            BlockError::new(ErrorClass::Invalid, format!("invalid header name {name:?}"))
        })?;
        // The value is not echoed: it may be a secret.
        let value = HeaderValue::from_str(value).map_err(|_| {
            BlockError::new(
                ErrorClass::Invalid,
                format!("invalid value for header {name}"),
            )
        })?;
        headers.append(name, value);
    }
    if !headers.contains_key(reqwest::header::USER_AGENT) {
        headers.insert(
            reqwest::header::USER_AGENT,
            HeaderValue::from_static(DEFAULT_USER_AGENT),
        );
    }
    Ok(headers)
}

/// A failed `send()`: a refusal from the resolver, a name that did not resolve, a timeout, or
/// a network failure (the URL is left out: it may carry secrets).
fn send_error(e: reqwest::Error, host: &str) -> BlockError {
    let mut source: Option<&(dyn StdError + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refusal>() {
            return BlockError::new(ErrorClass::Refused, r.0.clone());
        }
        if let Some(l) = s.downcast_ref::<LookupFailure>() {
            return BlockError::new(ErrorClass::Network, l.0.clone());
        }
        source = s.source();
    }
    if e.is_timeout() {
        return BlockError::new(
            ErrorClass::Timeout,
            format!("webhook request to {host} timed out"),
        );
    }
    BlockError::new(
        ErrorClass::Network,
        format!(
            "webhook request to {host} failed: {}",
            error_chain(&e.without_url())
        ),
    )
}

fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Reads at most `limit` bytes of the body; the flag says whether there was more.
async fn read_body(
    mut resp: reqwest::Response,
    limit: usize,
    host: &str,
) -> Result<(Vec<u8>, bool), BlockError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Ok((Vec::new(), true));
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    let room = limit - body.len();
                    body.extend_from_slice(&chunk[..room]);
                    return Ok((body, true));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok((body, false)),
            Err(e) if e.is_timeout() => {
                return Err(BlockError::new(
                    ErrorClass::Timeout,
                    format!("reading the response from {host} timed out"),
                ))
            }
            Err(e) => {
                return Err(BlockError::new(
                    ErrorClass::Network,
                    format!(
                        "reading the response from {host} failed: {}",
                        error_chain(&e.without_url())
                    ),
                ))
            }
        }
    }
}

async fn read_response(resp: reqwest::Response, host: &str) -> Result<WebhookResponse, BlockError> {
    let status = resp.status();
    let mut headers = serde_json::Map::new();
    for name in resp.headers().keys() {
        let joined = resp
            .headers()
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        headers.insert(
            name.as_str().to_owned(),
            Value::String(truncate(&joined, MAX_HEADER_VALUE_BYTES).to_owned()),
        );
    }
    let is_json = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let essence = ct.split(';').next().unwrap_or_default().trim();
            essence.eq_ignore_ascii_case("application/json")
                || essence.to_ascii_lowercase().ends_with("+json")
        })
        .unwrap_or(false);
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));

    let (body, too_large) = read_body(resp, MAX_RESPONSE_BYTES, host).await?;
    if status.is_success() {
        if too_large {
            return Err(BlockError::new(
                ErrorClass::Invalid,
                format!(
                    "webhook response larger than {} KiB",
                    MAX_RESPONSE_BYTES / 1024
                ),
            ));
        }
        let body = is_json
            .then(|| serde_json::from_slice(&body).ok())
            .flatten()
            .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&body).into_owned()));
        return Ok(WebhookResponse {
            status: status.as_u16(),
            headers,
            body,
            duration_ms: 0,
        });
    }
    let text = String::from_utf8_lossy(&body);
    let mut excerpt = truncate(text.trim(), ERROR_BODY_CHARS).to_owned();
    if excerpt.len() < text.trim().len() {
        excerpt.push('…');
    }
    let said = if excerpt.is_empty() {
        String::new()
    } else {
        format!(": {excerpt}")
    };
    let message = format!("{host} answered {status}{said}");
    Err(match status.as_u16() {
        429 => BlockError::new(ErrorClass::RateLimited, message).with_retry_after(retry_after),
        500..=599 => BlockError::new(ErrorClass::Server, message).with_retry_after(retry_after),
        _ => BlockError::new(ErrorClass::Client, message),
    })
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A `Retry-After` value: delay seconds, or an HTTP-date (a past date is no wait).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

// ---------------------------------------------------------------------------------------
// The whole block
// ---------------------------------------------------------------------------------------

/// The whole block: attempts per `policy`, waiting per [`RetryPolicy::delay`] (which honours
/// `Retry-After`), within the per-attempt timeout ([`DEFAULT_ATTEMPT_TIMEOUT`] if unset) and
/// the total timeout; cancellation ends it at once with a `Refused` "cancelled" error.
/// `on_retry(attempt, &err, wait)` is called before each wait, `attempt` being the failed
/// attempt's number (1-based). Returns the response and the attempts made. A wait that would
/// run past the total timeout is not started: the last error is returned instead.
pub async fn send_with_retry(
    client: &WebhookClient,
    req: &WebhookRequest,
    policy: &RetryPolicy,
    cancel: &CancellationToken,
    on_retry: &mut (dyn FnMut(u32, &BlockError, Duration) + Send),
) -> Result<(WebhookResponse, u32), BlockError> {
    let deadline = policy.total_timeout().map(|t| Instant::now() + t);
    let total_timeout = || {
        BlockError::new(
            ErrorClass::Timeout,
            format!(
                "webhook did not finish within its total timeout of {} ms",
                policy.total_timeout_ms.unwrap_or_default()
            ),
        )
    };
    let cancelled = || BlockError::new(ErrorClass::Refused, "cancelled");
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut timeout = policy.attempt_timeout().unwrap_or(DEFAULT_ATTEMPT_TIMEOUT);
        let mut cut_by_total = false;
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(total_timeout());
            }
            if left < timeout {
                timeout = left;
                cut_by_total = true;
            }
        }
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(cancelled()),
            r = client.send(req, timeout) => r,
        };
        let err = match result {
            Ok(resp) => return Ok((resp, attempt)),
            Err(e) if e.class == ErrorClass::Timeout && cut_by_total => return Err(total_timeout()),
            Err(e) => e,
        };
        if !policy.should_retry(&err, attempt) {
            return Err(err);
        }
        let wait = policy.delay(attempt, err.retry_after);
        if deadline.is_some_and(|d| Instant::now() + wait >= d) {
            return Err(err);
        }
        on_retry(attempt, &err, wait);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(cancelled()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
