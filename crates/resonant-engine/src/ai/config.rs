//! The provider table and the router's settings, as data: the seed's table and fallback chains
//! are the defaults, and a config file (`RouterConfig::from_json`) can change any field of a
//! provider, add providers, remove them and replace chains.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::providers::ProviderKind;
use crate::db::providers::ProviderKey;
use crate::retry::RetryPolicy;

/// One row of the provider table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderSpec {
    /// Stable id, used in block overrides, fallback chains and usage records.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// The key family this provider uses ("claude", "openai", "gemini", "llama", "demo");
    /// a `ProviderKey` of that family unlocks it. Defaults from `kind` when omitted.
    #[serde(default)]
    pub family: String,
    /// The wire format.
    pub kind: ProviderKind,
    /// The model name sent on the wire.
    pub model: String,
    /// USD per million input tokens.
    pub input_price_per_m: f64,
    /// USD per million output tokens.
    pub output_price_per_m: f64,
    /// Context window, prompt and output together.
    pub max_context_tokens: u64,
    /// What the provider is good at; matched against a block's required strengths.
    #[serde(default)]
    pub strengths: Vec<String>,
    /// Typical latency, for the "speed" priority.
    #[serde(default)]
    pub latency_ms: u64,
    /// 0–1, for the "quality" priority.
    #[serde(default = "one")]
    pub reliability: f64,
    /// Where requests go unless the key names its own base URL. Defaults from `kind`.
    #[serde(default)]
    pub base_url: String,
}

fn one() -> f64 {
    1.0
}

impl ProviderSpec {
    /// Price used to rank by cost: input and output per million together. With the default
    /// table it orders providers exactly as the seed's single `costPer1MTokens` did.
    pub fn blended_price(&self) -> f64 {
        self.input_price_per_m + self.output_price_per_m
    }

    /// Cost in USD of a call with these token counts.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        input_tokens as f64 * self.input_price_per_m / 1e6
            + output_tokens as f64 * self.output_price_per_m / 1e6
    }

    fn fill_defaults(&mut self) -> Result<(), String> {
        if self.id.trim().is_empty() {
            return Err("a provider needs an id".into());
        }
        if self.name.is_empty() {
            self.name = self.id.clone();
        }
        let family = self.kind.family();
        if self.family.is_empty() {
            self.family = family.key_family().into();
        }
        if self.base_url.is_empty() {
            self.base_url = family
                .base_url()
                .ok_or_else(|| format!("provider {}: baseUrl is required", self.id))?
                .into();
        }
        let prices = [self.input_price_per_m, self.output_price_per_m];
        if prices.iter().any(|p| !p.is_finite() || *p < 0.0) {
            return Err(format!("provider {}: prices must be ≥ 0", self.id));
        }
        if !(0.0..=1.0).contains(&self.reliability) {
            return Err(format!(
                "provider {}: reliability must be between 0 and 1",
                self.id
            ));
        }
        if self.max_context_tokens == 0 {
            return Err(format!(
                "provider {}: maxContextTokens must be positive",
                self.id
            ));
        }
        Ok(())
    }
}

/// The circuit breaker's settings (one breaker per provider and key).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failed calls that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker skips the provider before one trial call is let through.
    #[serde(with = "millis", rename = "cooldownMs")]
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A `serverKeys` entry of the config file: a server key of a provider family ("claude",
/// "openai", "gemini", "llama": a provider's `family`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileKey {
    family: String,
    api_key: String,
    /// Replaces the provider's base URL (a proxy, a self-hosted OpenAI-compatible server).
    #[serde(default)]
    base_url: Option<String>,
}

/// The router's settings.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// The provider table (the demo provider included).
    pub providers: Vec<ProviderSpec>,
    /// Provider id → the ids tried after it, in order.
    pub fallback: HashMap<String, Vec<String>>,
    /// Keys used when the workspace has none of a family (their `priority` and
    /// `max_tokens_per_request` are not used).
    pub server_keys: Vec<ProviderKey>,
    /// Wait between two demo tokens (0 for benchmarks).
    pub demo_delay: Duration,
    /// Circuit breaker settings.
    pub breaker: BreakerConfig,
    /// Attempts per provider, backoff, and the block's total timeout.
    pub retry: RetryPolicy,
    /// One provider call's limit, from sending the request to the last event.
    pub request_timeout: Duration,
    /// From sending the request to the first streamed text.
    pub first_token_timeout: Duration,
}

/// The seed's table (docs: architecture.md, "AI Router Architecture") plus the demo provider:
/// one row per family ([`ProviderKind::ALL`]'s order), each family's in its file.
///
/// The seed has one `costPer1MTokens` per provider; real providers bill input and output
/// separately, so the defaults are each model's published list prices per million tokens
/// (input / output). The seed's number is close to the output price for most of them, and
/// ranking by cost uses input + output, which orders the providers exactly as the seed did
/// (llama < gemini < claude < gpt-4-turbo).
pub fn default_providers() -> Vec<ProviderSpec> {
    ProviderKind::ALL
        .into_iter()
        .map(|kind| {
            let seed = kind.family().seed();
            let mut s = ProviderSpec {
                id: seed.id.into(),
                name: seed.name.into(),
                family: String::new(),
                kind,
                model: seed.model.into(),
                input_price_per_m: seed.prices.0,
                output_price_per_m: seed.prices.1,
                max_context_tokens: seed.max_context_tokens,
                strengths: seed.strengths.iter().map(|s| s.to_string()).collect(),
                latency_ms: seed.latency_ms,
                reliability: seed.reliability,
                base_url: seed.base_url.into(),
            };
            s.fill_defaults().expect("default table is valid");
            s
        })
        .collect()
}

/// The seed's fallback chains.
pub fn default_fallback() -> HashMap<String, Vec<String>> {
    let chain = |id: &str, rest: &[&str]| {
        (
            id.to_string(),
            rest.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    };
    HashMap::from([
        chain(
            "claude-3-5-sonnet",
            &["gpt-4-turbo", "gemini-1.5-pro", "llama-3-70b"],
        ),
        chain(
            "gpt-4-turbo",
            &["claude-3-5-sonnet", "gemini-1.5-pro", "llama-3-70b"],
        ),
        chain(
            "gemini-1.5-pro",
            &["claude-3-5-sonnet", "gpt-4-turbo", "llama-3-70b"],
        ),
        chain(
            "llama-3-70b",
            &["gemini-1.5-pro", "claude-3-5-sonnet", "gpt-4-turbo"],
        ),
    ])
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            providers: default_providers(),
            fallback: default_fallback(),
            server_keys: Vec::new(),
            demo_delay: Duration::from_millis(15),
            breaker: BreakerConfig::default(),
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(300),
            // A provider that has sent nothing for 12 s is hung or overloaded: the next one
            // in the chain is likelier to answer than the same one again.
            first_token_timeout: Duration::from_secs(12),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    providers: Vec<Value>,
    #[serde(default)]
    fallback: HashMap<String, Vec<String>>,
    #[serde(default)]
    server_keys: Vec<FileKey>,
    demo_delay_ms: Option<u64>,
    breaker: Option<BreakerConfig>,
    retry: Option<RetryPolicy>,
    request_timeout_ms: Option<u64>,
    first_token_timeout_ms: Option<u64>,
}

impl RouterConfig {
    /// Reads the router's config file, the seed's values being the defaults:
    ///
    /// ```json
    /// { "providers": [
    ///     { "id": "claude-3-5-sonnet", "model": "claude-3-5-sonnet-latest" },   // changes fields
    ///     { "id": "llama-3-70b", "disabled": true },                             // removes it
    ///     { "id": "mixtral", "kind": "openai-compatible", "family": "llama",     // adds one
    ///       "model": "mixtral-8x7b", "inputPricePerM": 0.24, "outputPricePerM": 0.24,
    ///       "maxContextTokens": 32768, "baseUrl": "https://api.groq.com/openai" } ],
    ///   "fallback": { "claude-3-5-sonnet": ["gpt-4-turbo", "mixtral"] },         // replaces a chain
    ///   "serverKeys": [ { "family": "claude", "apiKey": "…" } ],
    ///   "demoDelayMs": 15, "breaker": { "failureThreshold": 5, "cooldownMs": 30000 },
    ///   "retry": { "attempts": 2 }, "requestTimeoutMs": 300000, "firstTokenTimeoutMs": 60000 }
    /// ```
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let file: FileConfig = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        let mut config = RouterConfig::default();
        for entry in file.providers {
            let Value::Object(mut fields) = entry else {
                return Err("each provider must be an object".into());
            };
            let id = fields
                .get("id")
                .and_then(Value::as_str)
                .ok_or("each provider needs an \"id\"")?
                .to_string();
            let existing = config.providers.iter().position(|p| p.id == id);
            if let Some(Value::Bool(disabled)) = fields.remove("disabled") {
                if disabled {
                    if let Some(i) = existing {
                        config.providers.remove(i);
                    }
                    config.fallback.remove(&id);
                    continue;
                }
            }
            let merged = match existing {
                Some(i) => {
                    let mut base = match serde_json::to_value(&config.providers[i]) {
                        Ok(Value::Object(m)) => m,
                        _ => unreachable!("a spec serialises to an object"),
                    };
                    base.extend(fields);
                    Value::Object(base)
                }
                None => Value::Object(fields),
            };
            let mut spec: ProviderSpec =
                serde_json::from_value(merged).map_err(|e| format!("provider {id}: {e}"))?;
            spec.fill_defaults()?;
            match existing {
                Some(i) => config.providers[i] = spec,
                None => config.providers.push(spec),
            }
        }
        config.fallback.extend(file.fallback);
        config.server_keys = file
            .server_keys
            .into_iter()
            .map(|k| ProviderKey::new(k.family, k.api_key, k.base_url))
            .collect();
        if let Some(ms) = file.demo_delay_ms {
            config.demo_delay = Duration::from_millis(ms);
        }
        if let Some(b) = file.breaker {
            if b.failure_threshold == 0 {
                return Err("breaker.failureThreshold must be positive".into());
            }
            config.breaker = b;
        }
        if let Some(r) = file.retry {
            r.check()?;
            config.retry = r;
        }
        if let Some(ms) = file.request_timeout_ms {
            config.request_timeout = Duration::from_millis(ms.max(1));
        }
        if let Some(ms) = file.first_token_timeout_ms {
            config.first_token_timeout = Duration::from_millis(ms.max(1));
        }
        // Chains may only name known providers (removing a provider drops it from chains).
        let known: std::collections::HashSet<&str> =
            config.providers.iter().map(|p| p.id.as_str()).collect();
        for (from, chain) in &config.fallback {
            if !known.contains(from.as_str()) {
                return Err(format!("fallback: unknown provider {from}"));
            }
            if let Some(bad) = chain.iter().find(|id| !known.contains(id.as_str())) {
                // A seed chain naming a provider the file removed is trimmed, not an error.
                if default_fallback().get(from).is_none_or(|c| c != chain) {
                    return Err(format!("fallback of {from}: unknown provider {bad}"));
                }
            }
        }
        for chain in config.fallback.values_mut() {
            chain.retain(|id| known.contains(id.as_str()));
        }
        let mut ids = std::collections::HashSet::new();
        if let Some(dup) = config.providers.iter().find(|p| !ids.insert(&p.id)) {
            return Err(format!("provider {} appears twice", dup.id));
        }
        Ok(config)
    }
}
