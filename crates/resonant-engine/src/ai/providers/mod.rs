//! The provider families, one file each: what is particular to a family — its defaults (key
//! family, base URL, its row of the default table, the model names it answers to), how its
//! request is built, how its stream events are read (text, usage, the terminal event, its
//! in-stream errors) and how its HTTP errors are classed. The router, the breakers, retries
//! and the HTTP/SSE framing (`super::wire`) are the same for every family.
//!
//! Adding a family is a file here with a unit type implementing [`Family`], a variant of
//! [`ProviderKind`] with its line in [`ProviderKind::ALL`] and [`ProviderKind::family`]. The
//! server's REST API (`/providers/{provider}`) lists the families' key families from here, and
//! its server-key flags (`--anthropic-api-key`, …) are the families' [`ServerKey`]s.

mod anthropic;
pub(crate) mod demo;
mod gemini;
mod openai;
mod openai_compatible;

use eventsource_stream::Event;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::wire::{Endpoint, Progress, WireRequest};
use crate::retry::{BlockError, ErrorClass};

pub use demo::DEMO_ID;

/// Which wire format a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProviderKind {
    /// Anthropic Messages API (`POST {base}/v1/messages`).
    #[serde(rename = "anthropic")]
    Anthropic,
    /// OpenAI Chat Completions (`POST {base}/v1/chat/completions`).
    #[serde(rename = "openai")]
    OpenAi,
    /// Google Gemini (`POST {base}/v1beta/models/{model}:streamGenerateContent?alt=sse`).
    #[serde(rename = "gemini")]
    Gemini,
    /// Any server speaking the OpenAI Chat Completions wire format (Groq, Together, vLLM, …).
    #[serde(rename = "openai-compatible")]
    OpenAiCompatible,
    /// The built-in demo provider: no network, no key, deterministic text.
    #[serde(rename = "demo")]
    Demo,
}

impl ProviderKind {
    /// Every family, in the order of the default table (and of the REST API's list).
    pub const ALL: [ProviderKind; 5] = [
        ProviderKind::Anthropic,
        ProviderKind::OpenAi,
        ProviderKind::Gemini,
        ProviderKind::OpenAiCompatible,
        ProviderKind::Demo,
    ];

    /// What is particular to this family.
    pub(crate) fn family(self) -> &'static dyn Family {
        match self {
            ProviderKind::Anthropic => &anthropic::Anthropic,
            ProviderKind::OpenAi => &openai::OpenAi,
            ProviderKind::Gemini => &gemini::Gemini,
            ProviderKind::OpenAiCompatible => &openai_compatible::OpenAiCompatible,
            ProviderKind::Demo => &demo::Demo,
        }
    }

    /// The key family this kind's providers use unless their row names another ("claude",
    /// "openai", "gemini", "llama", "demo"): a `ProviderKey` whose `provider` is that name unlocks them.
    pub fn key_family(self) -> &'static str {
        self.family().key_family()
    }

    /// The flags and environment variables that give the server its own key of this family
    /// (`None` for the demo).
    pub fn server_key(self) -> Option<&'static ServerKey> {
        self.family().server_key()
    }
}

/// The key families a workspace can store a key for (`PUT /providers/{provider}`): those of
/// the families that take one, in [`ProviderKind::ALL`]'s order.
pub fn key_families() -> impl Iterator<Item = &'static str> {
    ProviderKind::ALL
        .into_iter()
        .filter(|k| k.family().needs_key())
        .map(ProviderKind::key_family)
}

/// How the server is given its own key of a family: the flags and environment variables of
/// the key and of the base URL, with their help lines as `--help` shows them.
#[derive(Debug)]
pub struct ServerKey {
    /// The key's flag, without the dashes (`anthropic-api-key`).
    pub api_key_flag: &'static str,
    /// The key's environment variable (`ANTHROPIC_API_KEY`).
    pub api_key_env: &'static str,
    /// The key's help line.
    pub api_key_help: &'static str,
    /// The base URL's flag, without the dashes (`anthropic-base-url`).
    pub base_url_flag: &'static str,
    /// The base URL's environment variable (`ANTHROPIC_BASE_URL`).
    pub base_url_env: &'static str,
    /// The base URL's help line.
    pub base_url_help: &'static str,
}

/// A family's row of the default table (see [`super::default_providers`]).
pub(crate) struct Seed {
    pub id: &'static str,
    pub name: &'static str,
    pub model: &'static str,
    /// USD per million input and output tokens.
    pub prices: (f64, f64),
    pub max_context_tokens: u64,
    pub strengths: &'static [&'static str],
    pub latency_ms: u64,
    pub reliability: f64,
    /// Empty: the family's default base URL.
    pub base_url: &'static str,
}

/// One provider family. Its methods are called once per request (`build_request`) or once per
/// stream event (`handle_event`) through a `&'static dyn`: no allocation for the dispatch.
pub(crate) trait Family: Sync {
    /// The key family its providers use by default (see [`ProviderKind::key_family`]).
    fn key_family(&self) -> &'static str;

    /// Where requests go unless the provider's row or the key names another; `None` when
    /// every provider of this family must name its own.
    fn base_url(&self) -> Option<&'static str>;

    /// Its row of the default table.
    fn seed(&self) -> Seed;

    /// Prefixes of the model names guessed to be this family's when a block names a model
    /// outside the table (lowercase).
    fn model_prefixes(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether its providers need a key (workspaces can store one, the server can have one).
    fn needs_key(&self) -> bool {
        true
    }

    /// How the server is given its own key of this family (`None`: it takes none).
    fn server_key(&self) -> Option<&'static ServerKey> {
        None
    }

    /// The HTTP request of one streamed call.
    fn build_request(
        &self,
        client: &reqwest::Client,
        endpoint: &Endpoint<'_>,
        req: &WireRequest<'_>,
    ) -> reqwest::RequestBuilder;

    /// Reads one SSE event: returns the text it carries, records usage and the terminal event
    /// in `p`.
    fn handle_event(&self, event: &Event, p: &mut Progress) -> Result<Option<String>, BlockError>;

    /// The class of a non-success HTTP status.
    fn status_class(&self, status: StatusCode) -> ErrorClass {
        status_class(status)
    }
}

/// The class of a non-success HTTP status, for every family.
pub(crate) fn status_class(status: StatusCode) -> ErrorClass {
    match status.as_u16() {
        429 => ErrorClass::RateLimited,
        408 => ErrorClass::Timeout,
        500..=599 => ErrorClass::Server,
        _ => ErrorClass::Client,
    }
}

/// The key family a model name outside the table is guessed to belong to ("claude…" →
/// "claude", "gpt…" → "openai", …).
pub(crate) fn model_family_guess(model: &str) -> Option<&'static str> {
    let m = model.to_ascii_lowercase();
    ProviderKind::ALL
        .into_iter()
        .find(|k| k.family().model_prefixes().iter().any(|p| m.starts_with(p)))
        .map(ProviderKind::key_family)
}
