//! The AI router (issue 8): picks a provider for an AI block, streams its answer, and retries,
//! falls back and cools providers down in one loop.
//!
//! * **Provider table as data** ([`RouterConfig`], [`ProviderSpec`]): the seed's four providers
//!   and fallback chains are the defaults, plus a `demo` provider that needs no key.
//! * **Provider families** (`providers/`, one file each): a family's defaults, request, stream
//!   events and error quirks; everything else here is the same for every family.
//! * **Selection** (seed's `selectProvider`): only providers with a key are candidates (the
//!   workspace's keys first, then the server's); those whose context window is smaller than the
//!   estimated tokens (≈4 characters a token of system + prompt, plus `max_tokens`) are dropped;
//!   then those with none of the required strengths (unless that leaves none: strengths are a
//!   preference, a block is not failed for them); a block's provider/model override goes first;
//!   the rest is ranked by the block's priority.
//! * **The demo provider** is chosen only when the block asks for it (`provider: "demo"`) or
//!   when no provider has a key at all, so that a fresh install without keys runs workflows
//!   (every demo output starts with "[demo] " and has `demo: true`). It is never a fallback for
//!   a keyed provider: a failing real provider must fail the block, not answer with filler.
//! * **One loop** for retries, fallback and cooldown: the chain is the selected provider and
//!   its fallback chain (available ones only); each provider gets the retry policy's attempts
//!   for retryable failures (waiting at least its `Retry-After`), then the next one is tried;
//!   a provider whose circuit breaker is open is skipped.
//! * **Streaming**: text is passed on as it arrives. Switching provider before any text was
//!   streamed is invisible; once text was streamed, [`AiEvents::restarted`] tells the engine
//!   to discard it before the next attempt streams from scratch.

mod breaker;
mod config;
mod providers;
mod wire;

#[cfg(test)]
mod tests;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use crate::db::providers::ProviderKey;
pub use config::{default_fallback, default_providers, BreakerConfig, ProviderSpec, RouterConfig};
pub use providers::{key_families, ProviderKind, ServerKey, DEMO_ID};
pub use wire::parse_retry_after;

/// The fewest output tokens a provider's `maxTokensPerRequest` must leave for it to be tried.
const MIN_OUTPUT_TOKENS: u64 = 16;

/// The `max_tokens` sent when a block gives none.
pub(crate) fn wire_default_max_tokens() -> u32 {
    wire::DEFAULT_MAX_TOKENS
}

use crate::retry::{BlockError, ErrorClass, RetryPolicy};
use breaker::Breakers;
use providers::{demo, model_family_guess};
use wire::{Deadlines, Endpoint, Progress, WireRequest, DEFAULT_MAX_TOKENS};

/// What shape the block wants its output in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// Plain text.
    #[default]
    Text,
    /// Parsed into [`AiOutput::json`] (fences stripped, one repair call if it does not parse).
    Json,
    /// Markdown (passed through as text).
    Markdown,
}

/// What the block cares about most when no provider is named.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Lowest typical latency.
    Speed,
    /// The seed's score: reliability × 1 / price (× the share of required strengths matched).
    #[default]
    Quality,
    /// Lowest price (input + output per million tokens).
    Cost,
}

/// One AI block call.
#[derive(Clone, Debug, Default)]
pub struct AiRequest {
    /// System prompt.
    pub system: Option<String>,
    /// Already rendered.
    pub prompt: String,
    /// Sampling temperature (provider default when absent).
    pub temperature: Option<f64>,
    /// Output limit (Anthropic, which requires one, gets 4096 when absent).
    pub max_tokens: Option<u32>,
    /// Text, JSON or Markdown.
    pub output_format: OutputFormat,
    /// Block override: a provider id from the table (e.g. "claude-3-5-sonnet") or a family
    /// ("claude", "openai", "gemini", "llama", "demo"). Unknown names fail the block
    /// ([`ErrorClass::Invalid`]); a known provider without a key is skipped for the normal
    /// selection.
    pub provider: Option<String>,
    /// Model override: a table id or wire model name selects that provider; another name is
    /// sent on the wire to the provider it belongs to (named by `provider`, or guessed from
    /// the name's prefix: "claude…", "gpt…"/"o1…"/"o3…"/"o4…", "gemini…", "llama…").
    pub model: Option<String>,
    /// Ranking when no provider is named.
    pub priority: Priority,
    /// Strengths of the table (e.g. "coding"); providers with at least one are preferred.
    pub required_strengths: Vec<String>,
    /// The block's own retry policy (its `retry` and `timeoutMs`); the router's when absent.
    pub retry: Option<RetryPolicy>,
}

/// Callbacks during a call.
pub trait AiEvents: Send {
    /// Streamed text.
    fn delta(&mut self, text: &str);
    /// Called only when a new attempt starts after text was already streamed for this block
    /// (another provider, or the same one again after its stream was cut): the engine emits
    /// block.retrying and the client discards streamed text. `next_provider` is the id tried
    /// next.
    fn restarted(&mut self, reason: &str, next_provider: &str);
    /// Once per provider call, failed ones included (one usage record each).
    fn call_finished(&mut self, call: &CallRecord);
}

/// One provider call's usage.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CallRecord {
    /// Provider id from the table.
    pub provider: String,
    /// Model name sent on the wire.
    pub model: String,
    /// Tokens sent (reported by the provider, else estimated).
    pub input_tokens: u64,
    /// Tokens received (reported by the provider, else estimated).
    pub output_tokens: u64,
    /// Some count was estimated (≈4 characters a token) because the provider did not report it.
    pub estimated: bool,
    /// input × input price + output × output price, per million.
    pub cost_usd: f64,
    /// Why the call failed, if it did.
    pub error: Option<String>,
}

/// A block's answer. Usage and cost cover the calls that produced it (the answering call and
/// a JSON repair call, if any); failed calls before it are only in their [`CallRecord`]s.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AiOutput {
    /// The answer (for JSON, the JSON text without fences).
    pub text: String,
    /// The parsed answer when the block asked for JSON.
    pub json: Option<serde_json::Value>,
    /// The provider that answered.
    pub provider: String,
    /// The model it was asked for.
    pub model: String,
    /// Tokens sent.
    pub input_tokens: u64,
    /// Tokens received.
    pub output_tokens: u64,
    /// Some count was estimated.
    pub estimated: bool,
    /// USD.
    pub cost_usd: f64,
    /// The demo provider answered (the text starts with "[demo] ").
    pub demo: bool,
}

/// Tokens in `text` by the ≈4-characters-a-token rule (rounded up).
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// The AI router: shared by every execution (its breakers are the server's view of each
/// provider's health).
pub struct Router {
    config: RouterConfig,
    client: reqwest::Client,
    breakers: Breakers,
}

/// One entry of a block's chain.
#[derive(Clone, Debug)]
pub(crate) struct PlannedCall {
    pub spec: ProviderSpec,
    pub model: String,
    pub key: Option<ProviderKey>,
    /// The `max_tokens` to send: the block's, lowered to fit the workspace's
    /// `maxTokensPerRequest` for this provider.
    pub max_tokens: Option<u32>,
}

impl PlannedCall {
    fn breaker_key(&self) -> String {
        // Per provider and key: one workspace's exhausted quota must not stop the others.
        let mut h = DefaultHasher::new();
        if let Some(k) = &self.key {
            k.api_key.hash(&mut h);
            k.base_url.hash(&mut h);
        }
        format!("{}#{:016x}", self.spec.id, h.finish())
    }
}

/// A finished call's text and usage.
struct Done {
    text: String,
    input_tokens: u64,
    output_tokens: u64,
    estimated: bool,
    cost_usd: f64,
}

const REPAIR_SYSTEM: &str = "You fix malformed JSON. Reply with only the corrected, valid JSON \
     value: no explanation, no code fences.";

impl Router {
    /// A router with `config`'s table. Its HTTP client never retries or follows redirects on
    /// its own: the router's loop is the only place a call is repeated.
    pub fn new(config: RouterConfig) -> Router {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("the HTTP client builds");
        Router {
            breakers: Breakers::new(config.breaker.clone()),
            config,
            client,
        }
    }

    /// The router's settings.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    fn key_for<'a>(&'a self, family: &str, keys: &'a [ProviderKey]) -> Option<&'a ProviderKey> {
        let usable = |k: &&ProviderKey| k.provider == family && !k.api_key.trim().is_empty();
        keys.iter()
            .find(usable)
            .or_else(|| self.config.server_keys.iter().find(usable))
    }

    /// The providers a block's call tries, in order (see the module docs).
    pub(crate) fn plan(
        &self,
        req: &AiRequest,
        keys: &[ProviderKey],
    ) -> Result<Vec<PlannedCall>, BlockError> {
        let providers = &self.config.providers;
        let mut sent = req.system.clone().unwrap_or_default();
        sent.push_str(&req.prompt);
        let input = estimate_tokens(&sent);
        let needed = input + u64::from(req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS));
        let demo = providers.iter().find(|p| p.kind == ProviderKind::Demo);
        let demo_call = |spec: &ProviderSpec| PlannedCall {
            spec: spec.clone(),
            model: spec.model.clone(),
            key: None,
            max_tokens: req.max_tokens,
        };
        // The workspace's cap on one request's tokens (input and output): the output is
        // lowered to fit, and a provider whose cap the input alone would reach is no
        // candidate.
        let room_for_output = |k: &ProviderKey| -> Option<u64> {
            match k.max_tokens_per_request {
                None => Some(u64::MAX),
                Some(cap) => u64::try_from(cap)
                    .ok()
                    .and_then(|cap| cap.checked_sub(input))
                    .filter(|left| *left >= MIN_OUTPUT_TOKENS),
            }
        };
        let max_tokens_for = |k: Option<&ProviderKey>| -> Option<u32> {
            let Some(room) = k.and_then(room_for_output) else {
                return req.max_tokens;
            };
            if room == u64::MAX {
                return req.max_tokens;
            }
            let wanted = u64::from(req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS));
            Some(u32::try_from(wanted.min(room)).unwrap_or(u32::MAX))
        };

        // The block's override, resolved to a provider and the model to send.
        let name = req
            .provider
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let model = req
            .model
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let by_model = |m: &str, family: Option<&str>| {
            providers
                .iter()
                .find(|p| (p.id == m || p.model == m) && family.is_none_or(|f| p.family == f))
        };
        let preferred: Option<(&ProviderSpec, String)> = match (name, model) {
            (Some(n), m) => {
                let spec = if let Some(p) = providers.iter().find(|p| p.id == n) {
                    p
                } else if providers.iter().any(|p| p.family == n) {
                    m.and_then(|m| by_model(m, Some(n)))
                        .or_else(|| {
                            providers
                                .iter()
                                .find(|p| p.family == n && self.key_for(n, keys).is_some())
                        })
                        .or_else(|| providers.iter().find(|p| p.family == n))
                        .expect("the family has a provider")
                } else {
                    return Err(BlockError::new(
                        ErrorClass::Invalid,
                        format!("unknown AI provider \"{n}\""),
                    ));
                };
                Some((spec, m.unwrap_or(&spec.model).to_string()))
            }
            (None, Some(m)) => match by_model(m, None) {
                Some(p) => Some((p, p.model.clone())),
                None => {
                    let family = model_family_guess(m).ok_or_else(|| {
                        BlockError::new(
                            ErrorClass::Invalid,
                            format!("unknown model \"{m}\": name its provider too"),
                        )
                    })?;
                    let spec = providers
                        .iter()
                        .find(|p| p.family == family && self.key_for(family, keys).is_some())
                        .or_else(|| providers.iter().find(|p| p.family == family));
                    spec.map(|p| (p, m.to_string()))
                }
            },
            (None, None) => None,
        };
        if let Some((spec, _)) = preferred {
            if spec.kind == ProviderKind::Demo {
                return Ok(vec![demo_call(spec)]);
            }
        }

        let keyed: Vec<(&ProviderSpec, &ProviderKey)> = providers
            .iter()
            .filter(|p| p.kind != ProviderKind::Demo)
            .filter_map(|p| self.key_for(&p.family, keys).map(|k| (p, k)))
            .collect();
        if keyed.is_empty() {
            return match demo {
                Some(d) => Ok(vec![demo_call(d)]),
                None => Err(BlockError::new(
                    ErrorClass::Refused,
                    "no AI provider key is configured",
                )),
            };
        }
        let fits: Vec<(&ProviderSpec, &ProviderKey)> = keyed
            .iter()
            .copied()
            .filter(|(p, _)| p.max_context_tokens >= needed)
            .collect();
        if fits.is_empty() {
            return Err(BlockError::new(
                ErrorClass::Refused,
                format!("about {needed} tokens fit no available provider's context window"),
            ));
        }
        let capped = fits.len();
        let fits: Vec<(&ProviderSpec, &ProviderKey)> = fits
            .into_iter()
            .filter(|(_, k)| room_for_output(k).is_some())
            .collect();
        if fits.is_empty() {
            return Err(BlockError::new(
                ErrorClass::Refused,
                format!(
                    "the prompt's about {input} tokens leave no room for an answer within the \
                     workspace's maxTokensPerRequest of any of its {capped} providers"
                ),
            ));
        }
        let strengths = &req.required_strengths;
        let matched = |p: &ProviderSpec| {
            strengths
                .iter()
                .filter(|s| p.strengths.iter().any(|ps| ps == *s))
                .count()
        };
        let mut ranked: Vec<(&ProviderSpec, &ProviderKey)> = fits
            .iter()
            .copied()
            .filter(|(p, _)| strengths.is_empty() || matched(p) > 0)
            .collect();
        if ranked.is_empty() {
            ranked = fits.clone();
        }
        let quality = |p: &ProviderSpec| {
            let share = if strengths.is_empty() {
                1.0
            } else {
                matched(p) as f64 / strengths.len() as f64
            };
            let price = p.blended_price();
            let inverse = if price > 0.0 { 1.0 / price } else { f64::MAX };
            p.reliability * inverse * share
        };
        match req.priority {
            Priority::Speed => ranked.sort_by_key(|(p, _)| p.latency_ms),
            Priority::Cost => {
                ranked.sort_by(|(a, _), (b, _)| a.blended_price().total_cmp(&b.blended_price()))
            }
            Priority::Quality => ranked.sort_by(|(a, _), (b, _)| quality(b).total_cmp(&quality(a))),
        }
        // Once a workspace has ordered its providers (given them different priorities),
        // its order comes first, and is the fallback chain too: its own providers by
        // priority, then the server's. The sort is stable, so the block's ranking still
        // orders providers of equal priority.
        let own = |k: &ProviderKey| keys.iter().any(|w| w == k);
        let mut priorities: Vec<i64> = ranked
            .iter()
            .filter(|(_, k)| own(k))
            .map(|(_, k)| k.priority)
            .collect();
        priorities.sort_unstable();
        priorities.dedup();
        let ordered = priorities.len() > 1;
        if ordered {
            ranked.sort_by_key(|(_, k)| if own(k) { k.priority } else { i64::MAX });
        }

        let (primary, primary_model) = match preferred {
            Some((spec, model)) if fits.iter().any(|(p, _)| p.id == spec.id) => (spec, model),
            _ => (ranked[0].0, ranked[0].0.model.clone()),
        };
        let key_of = |spec: &ProviderSpec| {
            fits.iter()
                .find(|(p, _)| p.id == spec.id)
                .map(|(_, k)| (*k).clone())
        };
        let primary_key = key_of(primary);
        let mut chain = vec![PlannedCall {
            spec: primary.clone(),
            model: primary_model,
            max_tokens: max_tokens_for(primary_key.as_ref()),
            key: primary_key,
        }];
        let rest: Vec<&ProviderSpec> = match self.config.fallback.get(&primary.id) {
            Some(_) if ordered => ranked.iter().map(|(p, _)| *p).collect(),
            Some(ids) => ids
                .iter()
                .filter_map(|id| providers.iter().find(|p| &p.id == id))
                .collect(),
            // A provider without a chain of its own falls back to the ranking.
            None => ranked.iter().map(|(p, _)| *p).collect(),
        };
        for spec in rest {
            if chain.iter().any(|c| c.spec.id == spec.id) {
                continue;
            }
            if let Some(key) = key_of(spec) {
                chain.push(PlannedCall {
                    spec: spec.clone(),
                    model: spec.model.clone(),
                    max_tokens: max_tokens_for(Some(&key)),
                    key: Some(key),
                });
            }
        }
        Ok(chain)
    }

    /// Runs one AI block call: selection, streaming, retries, fallback, JSON parsing.
    ///
    /// Errors: [`ErrorClass::Refused`] "cancelled" when `cancel` fires, [`ErrorClass::Invalid`]
    /// for an unknown override or JSON that did not parse even after a repair call, otherwise
    /// the last provider's failure (all of them are named in the message).
    pub async fn complete(
        &self,
        req: &AiRequest,
        keys: &[ProviderKey],
        events: &mut dyn AiEvents,
        cancel: &CancellationToken,
    ) -> Result<AiOutput, BlockError> {
        let chain = self.plan(req, keys)?;
        let policy = req.retry.as_ref().unwrap_or(&self.config.retry);
        let total_deadline = policy.total_timeout().map(|d| Instant::now() + d);
        let json = req.output_format == OutputFormat::Json;
        let mut emitted = false;
        let mut failures: Vec<String> = Vec::new();
        let mut last: Option<BlockError> = None;

        for (i, call) in chain.iter().enumerate() {
            let breaker_key = call.breaker_key();
            let demo = call.spec.kind == ProviderKind::Demo;
            let mut attempt = 1u32;
            if i > 0 {
                // The editor hears of every change of provider, not only of those after
                // text was streamed (which it must also discard).
                let reason = last
                    .as_ref()
                    .map(|e| e.message.clone())
                    .unwrap_or_else(|| "falling back".into());
                events.restarted(&reason, &call.spec.id);
                emitted = false;
            }
            loop {
                if cancel.is_cancelled() {
                    return Err(wire::cancelled());
                }
                if !demo && !self.breakers.try_acquire(&breaker_key) {
                    failures.push(format!(
                        "{}: skipped (failing recently, cooling down)",
                        call.spec.id
                    ));
                    last.get_or_insert_with(|| {
                        BlockError::new(
                            ErrorClass::Server,
                            format!("{}: failing recently, cooling down", call.spec.id),
                        )
                    });
                    break;
                }
                if emitted {
                    let reason = last
                        .as_ref()
                        .map(|e| e.message.clone())
                        .unwrap_or_else(|| "restarting".into());
                    events.restarted(&reason, &call.spec.id);
                    emitted = false;
                }
                let wreq = WireRequest {
                    system: req.system.as_deref(),
                    prompt: &req.prompt,
                    temperature: req.temperature,
                    max_tokens: call.max_tokens,
                    json,
                    model: &call.model,
                };
                let result = self
                    .call_once(
                        call,
                        &wreq,
                        events,
                        Some(&mut emitted),
                        cancel,
                        total_deadline,
                        policy.attempt_timeout(),
                    )
                    .await;
                match result {
                    Ok(done) => {
                        if !demo {
                            self.breakers.success(&breaker_key);
                        }
                        return self
                            .finish(call, done, req, events, cancel, total_deadline)
                            .await;
                    }
                    Err(e) => {
                        if !demo {
                            if e == wire::cancelled() {
                                self.breakers.release(&breaker_key);
                            } else if breaker::counts(e.class) {
                                self.breakers.failure(&breaker_key);
                            } else {
                                self.breakers.success(&breaker_key);
                            }
                        }
                        if matches!(e.class, ErrorClass::Refused | ErrorClass::Invalid) {
                            return Err(e);
                        }
                        // A provider that sent nothing before the first-token timeout is
                        // not tried again: the next one is.
                        let hung = e.class == ErrorClass::Timeout
                            && e.message.ends_with(wire::FIRST_TOKEN_TIMEOUT);
                        let retry = !hung && policy.should_retry(&e, attempt);
                        if retry {
                            let wait = policy.delay(attempt, e.retry_after);
                            let past_deadline =
                                total_deadline.is_some_and(|d| Instant::now() + wait >= d);
                            if !past_deadline {
                                tokio::select! {
                                    biased;
                                    _ = cancel.cancelled() => return Err(wire::cancelled()),
                                    _ = tokio::time::sleep(wait) => {}
                                }
                                attempt += 1;
                                last = Some(e);
                                continue;
                            }
                        }
                        failures.push(e.message.clone());
                        last = Some(e);
                        if total_deadline.is_some_and(|d| Instant::now() >= d) {
                            return Err(BlockError::new(
                                ErrorClass::Timeout,
                                format!(
                                    "the AI call ran past its total timeout ({})",
                                    failures.join("; ")
                                ),
                            ));
                        }
                        break;
                    }
                }
            }
        }
        let last = last.unwrap_or_else(|| BlockError::new(ErrorClass::Server, "no provider"));
        let message = if failures.len() <= 1 {
            last.message.clone()
        } else {
            format!("every AI provider failed: {}", failures.join("; "))
        };
        Err(BlockError {
            class: last.class,
            message,
            retry_after: last.retry_after,
        })
    }

    /// One provider call; reports it through `call_finished`. Text is streamed to `events`
    /// only when `emitted` is given (set once some text was).
    #[allow(clippy::too_many_arguments)]
    async fn call_once(
        &self,
        call: &PlannedCall,
        wreq: &WireRequest<'_>,
        events: &mut dyn AiEvents,
        emitted: Option<&mut bool>,
        cancel: &CancellationToken,
        total_deadline: Option<Instant>,
        attempt_timeout: Option<std::time::Duration>,
    ) -> Result<Done, BlockError> {
        let spec = &call.spec;
        if spec.kind == ProviderKind::Demo {
            return demo::run(call, wreq, self.config.demo_delay, events, emitted, cancel).await;
        }
        let now = Instant::now();
        let mut end = now + self.config.request_timeout;
        if let Some(t) = attempt_timeout {
            end = end.min(now + t);
        }
        if let Some(t) = total_deadline {
            end = end.min(t);
        }
        let deadlines = Deadlines {
            end,
            first_token: now + self.config.first_token_timeout,
        };
        let key = call.key.as_ref();
        let endpoint = Endpoint {
            base_url: key
                .and_then(|k| k.base_url.as_deref())
                .filter(|u| !u.is_empty())
                .unwrap_or(&spec.base_url),
            api_key: key.map(|k| k.api_key.as_str()).unwrap_or(""),
        };
        let request = spec
            .kind
            .family()
            .build_request(&self.client, &endpoint, wreq);
        let mut progress = Progress::default();
        let result = {
            let stream = emitted.is_some();
            let mut emitted = emitted;
            let events_ref = &mut *events;
            let mut on_delta = |text: &str| {
                if stream {
                    events_ref.delta(text);
                    if let Some(e) = emitted.as_deref_mut() {
                        *e = true;
                    }
                }
            };
            wire::stream_call(
                request,
                spec,
                &mut progress,
                &mut on_delta,
                cancel,
                deadlines,
            )
            .await
        };
        let mut sent = wire::system_text(wreq).unwrap_or_default();
        sent.push_str(wreq.prompt);
        let input_tokens = progress
            .input_tokens
            .unwrap_or_else(|| estimate_tokens(&sent));
        let output_tokens = progress
            .output_tokens
            .unwrap_or_else(|| estimate_tokens(&progress.text));
        let estimated = progress.input_tokens.is_none() || progress.output_tokens.is_none();
        let cost_usd = spec.cost(input_tokens, output_tokens);
        events.call_finished(&CallRecord {
            provider: spec.id.clone(),
            model: call.model.clone(),
            input_tokens,
            output_tokens,
            estimated,
            cost_usd,
            error: result.as_ref().err().map(|e| e.message.clone()),
        });
        result.map(|()| Done {
            text: progress.text,
            input_tokens,
            output_tokens,
            estimated,
            cost_usd,
        })
    }

    /// The output of a successful call: JSON parsed (and repaired once) when asked for.
    async fn finish(
        &self,
        call: &PlannedCall,
        done: Done,
        req: &AiRequest,
        events: &mut dyn AiEvents,
        cancel: &CancellationToken,
        total_deadline: Option<Instant>,
    ) -> Result<AiOutput, BlockError> {
        let mut out = AiOutput {
            text: done.text,
            json: None,
            provider: call.spec.id.clone(),
            model: call.model.clone(),
            input_tokens: done.input_tokens,
            output_tokens: done.output_tokens,
            estimated: done.estimated,
            cost_usd: done.cost_usd,
            demo: call.spec.kind == ProviderKind::Demo,
        };
        if req.output_format != OutputFormat::Json {
            return Ok(out);
        }
        if let Some((text, value)) = parse_json_output(&out.text) {
            out.text = text;
            out.json = Some(value);
            return Ok(out);
        }
        // One repair call to the same provider, not streamed (the engine shows the final text).
        let prompt = format!(
            "The following was supposed to be valid JSON but does not parse. Return only the \
             valid JSON it was meant to be.\n\n{}",
            out.text
        );
        let wreq = WireRequest {
            system: Some(REPAIR_SYSTEM),
            prompt: &prompt,
            temperature: Some(0.0),
            max_tokens: call.max_tokens,
            json: true,
            model: &call.model,
        };
        let repaired = self
            .call_once(
                call,
                &wreq,
                events,
                None,
                cancel,
                total_deadline,
                req.retry
                    .as_ref()
                    .unwrap_or(&self.config.retry)
                    .attempt_timeout(),
            )
            .await;
        let repaired = match repaired {
            Ok(r) => r,
            Err(e) if e == wire::cancelled() => return Err(e),
            Err(e) => {
                return Err(BlockError::new(
                    ErrorClass::Invalid,
                    format!(
                        "{}: the output is not valid JSON and the repair call failed: {}",
                        call.spec.id, e.message
                    ),
                ))
            }
        };
        out.input_tokens += repaired.input_tokens;
        out.output_tokens += repaired.output_tokens;
        out.estimated |= repaired.estimated;
        out.cost_usd += repaired.cost_usd;
        match parse_json_output(&repaired.text) {
            Some((text, value)) => {
                out.text = text;
                out.json = Some(value);
                Ok(out)
            }
            None => Err(BlockError::new(
                ErrorClass::Invalid,
                format!(
                    "{}: the output is not valid JSON, even after a repair request",
                    call.spec.id
                ),
            )),
        }
    }
}

/// Parses a model's JSON answer: ```json fences (and prose around them) are stripped; failing
/// that, the span from the first `{`/`[` to the last `}`/`]` is tried. Returns the JSON text
/// and its value.
pub fn parse_json_output(text: &str) -> Option<(String, serde_json::Value)> {
    let trimmed = text.trim();
    let mut candidates: Vec<&str> = vec![trimmed];
    if let Some(start) = trimmed.find("```") {
        let after = &trimmed[start + 3..];
        // Skip the info string ("json") up to the end of the fence line.
        let body = after.find('\n').map(|i| &after[i + 1..]).unwrap_or("");
        let body = body.find("```").map(|i| &body[..i]).unwrap_or(body);
        candidates.insert(0, body.trim());
    }
    let open = trimmed.find(['{', '[']);
    let close = trimmed.rfind(['}', ']']);
    if let (Some(o), Some(c)) = (open, close) {
        if o < c {
            candidates.push(&trimmed[o..=c]);
        }
    }
    candidates.into_iter().find_map(|c| {
        serde_json::from_str::<serde_json::Value>(c)
            .ok()
            .map(|v| (c.to_string(), v))
    })
}
