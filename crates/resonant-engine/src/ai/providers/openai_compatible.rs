//! Any server speaking OpenAI's Chat Completions (Groq, Together, vLLM, …), key family
//! "llama": OpenAI's request and stream, without `response_format` (not every server has it).

use eventsource_stream::Event;

use super::{openai, Family, Seed, ServerKey};
use crate::ai::wire::{Endpoint, Progress, WireRequest};
use crate::retry::BlockError;

pub(crate) struct OpenAiCompatible;

static SERVER_KEY: ServerKey = ServerKey {
    api_key_flag: "llama-api-key",
    api_key_env: "LLAMA_API_KEY",
    api_key_help: "Server-wide key of the OpenAI-compatible endpoint serving Llama-class models",
    base_url_flag: "llama-base-url",
    base_url_env: "LLAMA_BASE_URL",
    base_url_help: "Base URL of the OpenAI-compatible endpoint serving Llama-class models",
};

impl Family for OpenAiCompatible {
    fn key_family(&self) -> &'static str {
        "llama"
    }

    /// None: a provider of this family names its server.
    fn base_url(&self) -> Option<&'static str> {
        None
    }

    /// Llama 3 70B as served by Groq, at its list prices: 0.59 / 0.79 USD per million input /
    /// output tokens.
    fn seed(&self) -> Seed {
        Seed {
            id: "llama-3-70b",
            name: "Llama 3 70B",
            model: "llama3-70b-8192",
            prices: (0.59, 0.79),
            max_context_tokens: 8192,
            strengths: &["bulk", "simple", "cost-effective"],
            latency_ms: 400,
            reliability: 0.95,
            base_url: "https://api.groq.com/openai",
        }
    }

    fn model_prefixes(&self) -> &'static [&'static str] {
        &["llama", "meta-llama"]
    }

    fn server_key(&self) -> Option<&'static ServerKey> {
        Some(&SERVER_KEY)
    }

    fn build_request(
        &self,
        client: &reqwest::Client,
        endpoint: &Endpoint<'_>,
        req: &WireRequest<'_>,
    ) -> reqwest::RequestBuilder {
        openai::request(client, endpoint, req, false)
    }

    fn handle_event(&self, event: &Event, p: &mut Progress) -> Result<Option<String>, BlockError> {
        openai::handle_event(event, p)
    }
}
