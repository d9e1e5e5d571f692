//! The `webhook` block's HTTP client, guarded against server-side request forgery.
//!
//! Every destination is checked *after* DNS resolution, and the connection goes only to the
//! addresses that were checked: the client's own DNS resolver (`GuardedResolver`) is the one
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

    /// Whether this rule lets a request to `host` (if named) at `ip` through.
    pub fn allows(&self, host: Option<&str>, ip: IpAddr) -> bool {
        match self {
            AllowRule::Host(name) => host.is_some_and(|h| normalise_host(h) == *name),
            AllowRule::Network { addr, prefix } => mask(ip, *prefix) == *addr,
        }
    }
}

/// Which destinations webhook blocks may reach besides public addresses.
#[derive(Clone, Debug, Default)]
pub struct EgressPolicy {
    /// Networks and host names allowed even though they are not public, each on one port
    /// or on any.
    pub allow: Vec<(AllowRule, Option<u16>)>,
}

/// Splits `host:port` (`[v6]:port` for IPv6) into the rule and its port; a bare IPv6 address
/// or network has no port.
fn split_port(entry: &str) -> Result<(&str, Option<u16>), String> {
    let entry = entry.trim();
    let (rule, port) = if let Some(rest) = entry.strip_prefix('[') {
        match rest.split_once("]:") {
            Some((inner, port)) => (inner, Some(port)),
            None => (entry, None),
        }
    } else if entry.matches(':').count() == 1 {
        let (rule, port) = entry.split_once(':').unwrap_or((entry, ""));
        (rule, Some(port))
    } else {
        (entry, None)
    };
    match port {
        None => Ok((rule, None)),
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .map(|p| (rule, Some(p)))
            .ok_or_else(|| format!("{p:?} is not a port")),
    }
}

impl EgressPolicy {
    /// Reads allow-list entries: [`AllowRule::parse`]'s, each optionally with `:port`
    /// (`10.0.0.0/8:8080`, `hooks.internal:8443`, `[fd00::1]:80`); an error names the entry.
    pub fn parse(entries: &[String]) -> Result<EgressPolicy, String> {
        let allow = entries
            .iter()
            .map(|e| {
                let (rule, port) =
                    split_port(e).map_err(|m| format!("egress allow-list entry {e:?}: {m}"))?;
                let rule = AllowRule::parse(rule)
                    .map_err(|m| format!("egress allow-list entry {e:?}: {m}"))?;
                Ok((rule, port))
            })
            .collect::<Result<_, String>>()?;
        Ok(EgressPolicy { allow })
    }

    /// Whether a URL naming `host` on `port` may be called as far as the allow-list's ports
    /// go: a name that only port-bound host rules allow must use one of their ports. (An
    /// address literal is checked with its port by [`EgressPolicy::check_port`].)
    pub fn name_port_allowed(&self, host: &str, port: u16) -> Result<(), String> {
        let host = normalise_host(host);
        let mut ports = self.allow.iter().filter_map(|(r, p)| match r {
            AllowRule::Host(name) if *name == host => Some(*p),
            _ => None,
        });
        let mut listed = Vec::new();
        for p in ports.by_ref() {
            match p {
                None => return Ok(()),
                Some(p) if p == port => return Ok(()),
                Some(p) => listed.push(p.to_string()),
            }
        }
        if listed.is_empty() {
            return Ok(());
        }
        Err(format!(
            "refused: {host} is in the server's egress allow-list on port {} only, not {port}",
            listed.join(", ")
        ))
    }

    /// [`EgressPolicy::check`] for a connection whose port is known (an address literal in
    /// a URL): rules bound to another port do not apply.
    pub fn check_port(&self, ip: IpAddr, port: u16) -> Result<(), String> {
        self.check_with(None, ip, |p| p.is_none_or(|p| p == port))
    }

    /// Whether a connection to `ip` (reached through the name `host`, if any) is allowed;
    /// the error says why not, naming the address. The port is not known here (the
    /// resolver sees names only), so network rules bound to a port do not apply: they allow
    /// URLs that name their addresses; host rules bound to a port do, their port having been
    /// checked on the URL ([`EgressPolicy::name_port_allowed`]).
    pub fn check(&self, host: Option<&str>, ip: IpAddr) -> Result<(), String> {
        self.check_with(host, ip, |_| false)
    }

    fn check_with(
        &self,
        host: Option<&str>,
        ip: IpAddr,
        port_ok: impl Fn(Option<u16>) -> bool,
    ) -> Result<(), String> {
        let canonical = ip.to_canonical();
        let applies = |(r, p): &(AllowRule, Option<u16>)| match r {
            AllowRule::Host(_) => true,
            AllowRule::Network { .. } => p.is_none() || port_ok(*p),
        };
        if self
            .allow
            .iter()
            .filter(|e| applies(e))
            .any(|(r, _)| r.allows(host, canonical))
        {
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
struct GuardedResolver {
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
        let port = url.port_or_known_default().unwrap_or(80);
        // The URL parser has already turned every IPv4 spelling (0x7f.1, 2130706433) into
        // dotted form; IPv6 comes bracketed.
        let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        else {
            return self
                .policy
                .name_port_allowed(host, port)
                .map_err(|m| BlockError::new(ErrorClass::Refused, m));
        };
        self.policy
            .check_port(ip, port)
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
pub(crate) fn truncate(s: &str, max: usize) -> &str {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use axum::body::Body;
    use axum::extract::State;
    use axum::http::{HeaderMap as AxHeaders, Method as AxMethod, Uri};
    use axum::response::Response;
    use serde_json::json;

    /// A loopback mock server counting hits per path.
    struct Mock {
        addr: SocketAddr,
        hits: Arc<Mutex<HashMap<String, usize>>>,
    }

    impl Mock {
        fn hits(&self, path: &str) -> usize {
            self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
        }
        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }
        fn port(&self) -> u16 {
            self.addr.port()
        }
    }

    type Hits = Arc<Mutex<HashMap<String, usize>>>;

    async fn handle(
        State(hits): State<Hits>,
        method: AxMethod,
        uri: Uri,
        headers: AxHeaders,
        body: String,
    ) -> Response {
        let path = uri.path().to_owned();
        let n = {
            let mut h = hits.lock().unwrap();
            let n = h.entry(path.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let query = uri.query().unwrap_or_default().to_owned();
        let reply = |status: u16, headers: &[(&str, &str)], body: Body| {
            let mut b = Response::builder().status(status);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(body).unwrap()
        };
        let json_ct = [("content-type", "application/json")];
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        match path.as_str() {
            "/echo" | "/closing" => {
                let echoed = json!({
                    "method": method.as_str(),
                    "body": body,
                    "userAgent": header("user-agent"),
                    "xTest": header("x-test"),
                    "authorization": header("authorization"),
                    "contentType": header("content-type"),
                });
                let mut hs = vec![("content-type", "application/json")];
                if path == "/closing" {
                    hs.push(("connection", "close"));
                }
                reply(200, &hs, Body::from(echoed.to_string()))
            }
            "/json" => reply(200, &json_ct, Body::from(r#"{"ok":true,"n":1}"#)),
            "/bad-json" => reply(200, &json_ct, Body::from("{not json")),
            "/text" => reply(200, &[("x-long", &"v".repeat(20_000))], Body::from("hello")),
            "/big" => reply(200, &[], Body::from(vec![b'a'; 2 * MAX_RESPONSE_BYTES])),
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                reply(200, &[], Body::from("late"))
            }
            "/flaky429" if n == 1 => reply(429, &[("retry-after", "1")], Body::from("slow down")),
            "/flaky429" => reply(200, &json_ct, Body::from(r#"{"ok":true}"#)),
            "/loop" => reply(302, &[("location", "/loop")], Body::empty()),
            p if p.starts_with("/status/") => {
                let code: u16 = p["/status/".len()..].parse().unwrap();
                reply(
                    code,
                    &[],
                    Body::from(format!("nope {code} {}", "x".repeat(2_000))),
                )
            }
            p if p.starts_with("/redirect/") => {
                let code: u16 = p["/redirect/".len()..].parse().unwrap();
                let to = query.strip_prefix("to=").unwrap_or("/echo");
                reply(code, &[("location", to)], Body::empty())
            }
            _ => reply(404, &[], Body::from("no such path")),
        }
    }

    async fn mock() -> Mock {
        let hits: Hits = Arc::default();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(hits.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Mock { addr, hits }
    }

    fn policy(entries: &[&str]) -> EgressPolicy {
        EgressPolicy::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn loopback_allowed() -> WebhookClient {
        WebhookClient::new(policy(&["127.0.0.1/32"]))
    }

    /// Names resolved from a fixed table; anything else does not resolve.
    fn table(entries: &[(&str, &str)]) -> LookupFn {
        let map: HashMap<String, Vec<IpAddr>> = entries
            .iter()
            .map(|(name, ips)| {
                (
                    name.to_string(),
                    ips.split(',').map(|ip| ip.parse().unwrap()).collect(),
                )
            })
            .collect();
        Arc::new(move |name| map.get(name).cloned().unwrap_or_default())
    }

    fn get(url: impl Into<String>) -> WebhookRequest {
        WebhookRequest {
            method: Method::GET,
            url: url.into(),
            headers: vec![],
            body: None,
        }
    }

    const T: Duration = Duration::from_secs(5);

    async fn refused(client: &WebhookClient, url: &str, naming: &str) {
        let err = client.send(&get(url), T).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Refused, "{url}: {err:?}");
        assert!(err.message.contains(naming), "{url}: {}", err.message);
    }

    #[test]
    fn allow_list_entries_may_be_bound_to_a_port() {
        let p = policy(&[
            "127.0.0.1:8080",
            "10.0.0.0/8",
            "hooks.test:8443",
            "[::1]:80",
            "fd00::/8",
        ]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(p.check_port(ip("127.0.0.1"), 8080).is_ok());
        assert!(p.check_port(ip("127.0.0.1"), 8081).is_err());
        assert!(p.check_port(ip("::1"), 80).is_ok());
        assert!(p.check_port(ip("::1"), 81).is_err());
        assert!(p.check_port(ip("fd00::5"), 1234).is_ok());
        assert!(p.check_port(ip("10.1.2.3"), 9).is_ok());
        // Through a name the port is unknown: a port-bound network rule does not apply.
        assert!(p.check(Some("x.test"), ip("127.0.0.1")).is_err());
        assert!(p.check(Some("x.test"), ip("10.1.2.3")).is_ok());
        // A port-bound name: its port is checked on the URL, its addresses by name.
        assert!(p.name_port_allowed("hooks.test", 8443).is_ok());
        let e = p.name_port_allowed("hooks.test", 443).unwrap_err();
        assert!(e.contains("8443"), "{e}");
        assert!(p.name_port_allowed("other.test", 1).is_ok());
        assert!(p.check(Some("hooks.test"), ip("192.168.1.1")).is_ok());
        for bad in ["127.0.0.1:0", "127.0.0.1:x", "host:70000", "[::1]:"] {
            assert!(EgressPolicy::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_port_bound_entry_allows_its_port_only() {
        let m = mock().await;
        let other = if m.port() == 1 { 2 } else { m.port() - 1 };
        let client = WebhookClient::new(policy(&[&format!("127.0.0.1:{}", m.port())]));
        let resp = client.send(&get(m.url("/echo")), T).await.unwrap();
        assert_eq!(resp.status, 200);
        let elsewhere = WebhookClient::new(policy(&[&format!("127.0.0.1:{other}")]));
        refused(&elsewhere, &m.url("/echo"), "127.0.0.1").await;
        // Named (localhost), the port is not known when the address is checked: refused.
        refused(
            &client,
            &format!("http://localhost:{}/echo", m.port()),
            "127.0.0.1",
        )
        .await;
    }

    fn quick(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            initial_interval_ms: 10,
            jitter: 0.0,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn addresses_are_classified() {
        for blocked in [
            "0.0.0.0",
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "64:ff9b::7f00:1",
            "2002:a00:1::1",
            "100::1",
        ] {
            let ip: IpAddr = blocked.parse().unwrap();
            assert!(
                forbidden_reason(ip).is_some(),
                "{blocked} should be refused"
            );
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "2a00:1450::1",
            "64:ff9b::808:808",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert_eq!(forbidden_reason(ip), None, "{public} is public");
        }
        let p = EgressPolicy::default();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let err = p.check(None, mapped).unwrap_err();
        assert!(
            err.contains("::ffff:127.0.0.1") && err.contains("loopback"),
            "{err}"
        );
        let err = p
            .check(None, "169.254.169.254".parse().unwrap())
            .unwrap_err();
        assert!(err.contains("cloud metadata"), "{err}");
    }

    #[test]
    fn allow_lists_parse_and_match() {
        let p = policy(&[
            "127.0.0.1/32",
            "10.0.0.0/8",
            "fd00::/8",
            "Hooks.Internal.",
            "192.168.1.5",
        ]);
        assert!(p.check(None, "127.0.0.1".parse().unwrap()).is_ok());
        assert!(p.check(None, "::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(p.check(None, "127.0.0.2".parse().unwrap()).is_err());
        assert!(p.check(None, "10.200.0.1".parse().unwrap()).is_ok());
        assert!(p.check(None, "fd00::5".parse().unwrap()).is_ok());
        assert!(p.check(None, "192.168.1.5".parse().unwrap()).is_ok());
        assert!(p.check(None, "192.168.1.6".parse().unwrap()).is_err());
        assert!(p
            .check(Some("hooks.internal"), "172.16.0.1".parse().unwrap())
            .is_ok());
        assert!(p
            .check(Some("HOOKS.internal."), "172.16.0.1".parse().unwrap())
            .is_ok());
        assert!(p
            .check(Some("other.internal"), "172.16.0.1".parse().unwrap())
            .is_err());
        assert!(p.check(None, "8.8.8.8".parse().unwrap()).is_ok());
        for bad in ["10.0.0.0/33", "::/129", "x/8", "", "a b", "http://x/"] {
            let err = EgressPolicy::parse(&[bad.to_string()]).unwrap_err();
            assert!(err.contains("egress allow-list entry"), "{bad}: {err}");
        }
        assert_eq!(
            AllowRule::parse("10.1.2.3/8").unwrap(),
            AllowRule::Network {
                addr: "10.0.0.0".parse().unwrap(),
                prefix: 8
            }
        );
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn the_block_future_can_be_spawned() {
        fn assert_send<T: Send>(_: &T) {}
        let client = WebhookClient::new(EgressPolicy::default());
        let req = get("http://example.com/");
        let policy = RetryPolicy::once();
        let cancel = CancellationToken::new();
        let mut on_retry = |_: u32, _: &BlockError, _: Duration| {};
        let fut = send_with_retry(&client, &req, &policy, &cancel, &mut on_retry);
        assert_send(&fut);
    }

    #[tokio::test]
    async fn loopback_is_refused() {
        let m = mock().await;
        let client = WebhookClient::new(EgressPolicy::default());
        refused(&client, &m.url("/echo"), "127.0.0.1").await;
        refused(
            &client,
            &format!("http://localhost:{}/echo", m.port()),
            "localhost",
        )
        .await;
        refused(&client, &format!("http://[::1]:{}/echo", m.port()), "::1").await;
        refused(
            &client,
            &format!("http://0x7f000001:{}/echo", m.port()),
            "127.0.0.1",
        )
        .await;
        refused(
            &client,
            &format!("http://2130706433:{}/echo", m.port()),
            "127.0.0.1",
        )
        .await;
        refused(
            &client,
            &format!("http://[::ffff:127.0.0.1]:{}/echo", m.port()),
            "127.0.0.1",
        )
        .await;
        assert_eq!(m.hits("/echo"), 0);
    }

    #[tokio::test]
    async fn private_link_local_and_mapped_names_are_refused() {
        let client = WebhookClient::with_resolver(
            EgressPolicy::default(),
            table(&[
                ("ten.test", "10.0.0.5"),
                ("home.test", "192.168.0.10"),
                ("metadata.test", "169.254.169.254"),
                ("mapped.test", "::ffff:10.0.0.1"),
                ("ula.test", "fd00::1"),
                ("mixed.test", "8.8.8.8,10.0.0.9"),
                ("cgnat.test", "100.64.1.1"),
            ]),
        );
        refused(&client, "http://ten.test/", "10.0.0.5").await;
        refused(&client, "https://home.test/x", "192.168.0.10").await;
        refused(
            &client,
            "http://metadata.test/latest/meta-data/",
            "169.254.169.254",
        )
        .await;
        refused(&client, "http://mapped.test/", "10.0.0.1").await;
        refused(&client, "http://ula.test/", "fd00::1").await;
        refused(&client, "http://mixed.test/", "10.0.0.9").await;
        refused(&client, "http://cgnat.test/", "100.64.1.1").await;
        refused(
            &client,
            "http://169.254.169.254/latest/meta-data/",
            "cloud metadata",
        )
        .await;
        refused(&client, "http://[fe80::1]/", "link-local").await;
        refused(&client, "http://10.1.1.1/", "private").await;
        refused(&client, "http://0.0.0.0/", "unspecified").await;
        refused(&client, "ftp://example.com/", "only http and https").await;
        refused(&client, "file:///etc/passwd", "only http and https").await;
        let err = client
            .send(&get("http://nowhere.test/"), T)
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Network, "{err:?}");
        assert!(
            err.message.contains("could not resolve nowhere.test"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn dns_rebinding_cannot_swap_the_checked_address() {
        let m = mock().await;
        let lookups = Arc::new(AtomicUsize::new(0));
        let counter = lookups.clone();
        // The first answer is allowed (the mock); every later one is private.
        let lookup: LookupFn = Arc::new(move |_: &str| {
            if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                vec!["127.0.0.1".parse().unwrap()]
            } else {
                vec!["10.0.0.7".parse().unwrap()]
            }
        });
        let client = WebhookClient::with_resolver(policy(&["127.0.0.1/32"]), lookup);
        let url = format!("http://rebind.test:{}/closing", m.port());
        let resp = client.send(&get(&url), T).await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(
            lookups.load(Ordering::SeqCst),
            1,
            "the checked resolution is the one connected to: no second lookup"
        );
        // A new connection resolves again, and the new answer is checked again.
        refused(&client, &url, "10.0.0.7").await;
        assert_eq!(m.hits("/closing"), 1);
    }

    #[tokio::test]
    async fn redirects_to_refused_addresses_are_refused() {
        let m = mock().await;
        let client = WebhookClient::with_resolver(
            policy(&["allowed.test"]),
            table(&[("allowed.test", "127.0.0.1"), ("internal.test", "10.1.2.3")]),
        );
        let base = format!("http://allowed.test:{}", m.port());
        // The allowed name itself works…
        let ok = client.send(&get(format!("{base}/json")), T).await.unwrap();
        assert_eq!(ok.body, json!({"ok": true, "n": 1}));
        // …but not a redirect to the same server by address, nor to a private name.
        let to_ip = format!("{base}/redirect/302?to=http://127.0.0.1:{}/echo", m.port());
        refused(&client, &to_ip, "127.0.0.1").await;
        let to_private = format!(
            "{base}/redirect/307?to=http://internal.test:{}/echo",
            m.port()
        );
        refused(&client, &to_private, "10.1.2.3").await;
        let to_metadata = format!("{base}/redirect/301?to=http://169.254.169.254/");
        refused(&client, &to_metadata, "169.254.169.254").await;
        refused(
            &client,
            &format!("{base}/redirect/308?to=file:///etc/passwd"),
            "only http",
        )
        .await;
        assert_eq!(m.hits("/echo"), 0);
    }

    #[tokio::test]
    async fn allowed_redirects_are_followed() {
        let m = mock().await;
        let client = loopback_allowed();
        let post = |url: String| WebhookRequest {
            method: Method::POST,
            url,
            headers: vec![
                ("X-Test".into(), "kept".into()),
                ("Authorization".into(), "Bearer secret".into()),
                ("Content-Type".into(), "text/plain".into()),
            ],
            body: Some("payload".into()),
        };
        // 303 (relative Location): a GET without the body.
        let resp = client
            .send(&post(m.url("/redirect/303?to=/echo")), T)
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body["method"], "GET");
        assert_eq!(resp.body["body"], "");
        assert_eq!(resp.body["contentType"], Value::Null);
        assert_eq!(resp.body["xTest"], "kept");
        assert_eq!(
            resp.body["authorization"], "Bearer secret",
            "same origin keeps it"
        );
        // 302 after a POST: a GET as well.
        let resp = client
            .send(&post(m.url("/redirect/302?to=/echo")), T)
            .await
            .unwrap();
        assert_eq!(resp.body["method"], "GET");
        // 307: method and body kept.
        let resp = client
            .send(&post(m.url("/redirect/307?to=/echo")), T)
            .await
            .unwrap();
        assert_eq!(resp.body["method"], "POST");
        assert_eq!(resp.body["body"], "payload");
        // Another origin (localhost vs 127.0.0.1 is another origin) loses the credentials.
        let cross = WebhookClient::with_resolver(
            policy(&["127.0.0.1/32"]),
            table(&[("other.test", "127.0.0.1")]),
        );
        let to = format!("http://other.test:{}/echo", m.port());
        let resp = cross
            .send(&post(m.url(&format!("/redirect/307?to={to}"))), T)
            .await
            .unwrap();
        assert_eq!(resp.body["authorization"], Value::Null);
        assert_eq!(resp.body["xTest"], "kept");
        assert_eq!(m.hits("/echo"), 4);
        // A redirect loop stops after five hops.
        let err = client.send(&get(m.url("/loop")), T).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Client, "{err:?}");
        assert!(err.message.contains("redirects"), "{}", err.message);
        assert_eq!(m.hits("/loop"), MAX_REDIRECTS + 1);
    }

    #[tokio::test]
    async fn responses_are_parsed_and_limited() {
        let m = mock().await;
        let client = loopback_allowed();
        let resp = client.send(&get(m.url("/json")), T).await.unwrap();
        assert_eq!(resp.body, json!({"ok": true, "n": 1}));
        assert_eq!(resp.headers["content-type"], "application/json");
        let resp = client.send(&get(m.url("/bad-json")), T).await.unwrap();
        assert_eq!(resp.body, json!("{not json"));
        let resp = client.send(&get(m.url("/text")), T).await.unwrap();
        assert_eq!(resp.body, json!("hello"));
        assert_eq!(
            resp.headers["x-long"].as_str().unwrap().len(),
            MAX_HEADER_VALUE_BYTES
        );
        let err = client.send(&get(m.url("/big")), T).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Invalid, "{err:?}");
        assert!(
            err.message.contains("larger than 1024 KiB"),
            "{}",
            err.message
        );
        // The default user agent, and a block's own.
        let resp = client.send(&get(m.url("/echo")), T).await.unwrap();
        assert_eq!(resp.body["userAgent"], DEFAULT_USER_AGENT);
        let mut own = get(m.url("/echo"));
        own.headers.push(("User-Agent".into(), "mine/1".into()));
        let resp = client.send(&own, T).await.unwrap();
        assert_eq!(resp.body["userAgent"], "mine/1");
    }

    #[tokio::test]
    async fn connection_headers_are_refused() {
        let m = mock().await;
        let client = loopback_allowed();
        for name in ["Host", "content-length", "Transfer-Encoding", "Connection"] {
            let mut req = get(m.url("/echo"));
            req.headers.push((name.into(), "x".into()));
            let err = client.send(&req, T).await.unwrap_err();
            assert_eq!(err.class, ErrorClass::Invalid, "{name}: {err:?}");
            assert!(
                err.message.contains(&name.to_ascii_lowercase()),
                "{}",
                err.message
            );
        }
        let mut req = get(m.url("/echo"));
        req.headers.push(("x-secret".into(), "line\nbreak".into()));
        let err = client.send(&req, T).await.unwrap_err();
        assert!(
            !err.message.contains("line"),
            "values are not echoed: {}",
            err.message
        );
        assert_eq!(m.hits("/echo"), 0);
    }

    #[tokio::test]
    async fn statuses_map_to_error_classes() {
        let m = mock().await;
        let client = loopback_allowed();
        let err = client
            .send(&get(m.url("/status/404")), T)
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Client);
        assert!(
            err.message.contains("404") && err.message.contains("nope 404"),
            "{}",
            err.message
        );
        assert!(
            err.message.len() < 700,
            "the body is cut: {}",
            err.message.len()
        );
        let err = client
            .send(&get(m.url("/status/503")), T)
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Server);
        let err = client.send(&get(m.url("/flaky429")), T).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::RateLimited);
        assert_eq!(err.retry_after, Some(Duration::from_secs(1)));
        // Nobody listening: a network failure.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let err = client
            .send(&get(format!("http://127.0.0.1:{port}/")), T)
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Network, "{err:?}");
    }

    #[tokio::test]
    async fn rate_limits_are_waited_out_then_succeed() {
        let m = mock().await;
        let client = loopback_allowed();
        let mut waits = vec![];
        let started = Instant::now();
        let (resp, attempts) = send_with_retry(
            &client,
            &get(m.url("/flaky429")),
            &quick(3),
            &CancellationToken::new(),
            &mut |attempt, err: &BlockError, wait| waits.push((attempt, err.class, wait)),
        )
        .await
        .unwrap();
        assert_eq!((resp.status, attempts), (200, 2));
        assert_eq!(m.hits("/flaky429"), 2);
        assert_eq!(
            waits,
            vec![(1, ErrorClass::RateLimited, Duration::from_secs(1))]
        );
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "Retry-After honoured"
        );
    }

    #[tokio::test]
    async fn server_errors_retry_until_the_attempts_run_out() {
        let m = mock().await;
        let client = loopback_allowed();
        let mut retries = vec![];
        let err = send_with_retry(
            &client,
            &get(m.url("/status/500")),
            &quick(3),
            &CancellationToken::new(),
            &mut |attempt, _: &BlockError, _| retries.push(attempt),
        )
        .await
        .unwrap_err();
        assert_eq!(err.class, ErrorClass::Server);
        assert!(err.message.contains("500"), "{}", err.message);
        assert_eq!(retries, vec![1, 2]);
        assert_eq!(m.hits("/status/500"), 3);

        // A client error is not retried.
        let mut retried = false;
        let err = send_with_retry(
            &client,
            &get(m.url("/status/400")),
            &quick(3),
            &CancellationToken::new(),
            &mut |_, _: &BlockError, _| retried = true,
        )
        .await
        .unwrap_err();
        assert_eq!(err.class, ErrorClass::Client);
        assert!(!retried);
        assert_eq!(m.hits("/status/400"), 1);
    }

    #[tokio::test]
    async fn timeouts_per_attempt_and_in_total() {
        let m = mock().await;
        let client = loopback_allowed();
        let started = Instant::now();
        let err = client
            .send(&get(m.url("/slow")), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Timeout);
        assert!(started.elapsed() < Duration::from_secs(2));

        let per_attempt = RetryPolicy {
            attempt_timeout_ms: Some(150),
            ..quick(2)
        };
        let err = send_with_retry(
            &client,
            &get(m.url("/slow")),
            &per_attempt,
            &CancellationToken::new(),
            &mut |_, _: &BlockError, _| {},
        )
        .await
        .unwrap_err();
        assert_eq!(err.class, ErrorClass::Timeout);
        assert_eq!(m.hits("/slow"), 3);

        let total = RetryPolicy {
            total_timeout_ms: Some(300),
            ..quick(5)
        };
        let started = Instant::now();
        let err = send_with_retry(
            &client,
            &get(m.url("/slow")),
            &total,
            &CancellationToken::new(),
            &mut |_, _: &BlockError, _| {},
        )
        .await
        .unwrap_err();
        assert_eq!(err.class, ErrorClass::Timeout);
        assert!(err.message.contains("total timeout"), "{}", err.message);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn cancelling_during_a_wait_returns_promptly() {
        let m = mock().await;
        let client = loopback_allowed();
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            trigger.cancel();
        });
        let policy = RetryPolicy {
            initial_interval_ms: 60_000,
            max_interval_ms: 60_000,
            ..quick(3)
        };
        let mut waited = None;
        let started = Instant::now();
        let err = send_with_retry(
            &client,
            &get(m.url("/status/502")),
            &policy,
            &cancel,
            &mut |_, _: &BlockError, wait| waited = Some(wait),
        )
        .await
        .unwrap_err();
        assert_eq!(err.class, ErrorClass::Refused);
        assert_eq!(err.message, "cancelled");
        assert_eq!(waited, Some(Duration::from_secs(60)));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(m.hits("/status/502"), 1);
    }
}
