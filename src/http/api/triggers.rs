//! Triggers (webhook URLs and cron schedules) and published versions, over REST.
//!
//! A trigger runs its workflow as the user who created it, against the workflow's published
//! version unless it is set to `draft`. A webhook trigger's secret is sealed like provider
//! keys; unlike them it is shown to the workflow's editors, who paste it into the system
//! that calls the hook, and can be rotated. The hook itself is `src/http/hooks.rs`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::workflows::visible;
use super::{require, ApiError, Caller, Json, Page, Path};
use crate::db::triggers::{self as store, TriggerRow};
use crate::db::{self, new_id, now_ms, Action, Role, Workflow};
use crate::engine::triggers::Schedule;
use crate::AppState;

/// Most triggers one workflow may have.
const MAX_TRIGGERS: i64 = 20;
/// Most request headers a webhook trigger passes to the input.
const MAX_PASS_HEADERS: usize = 20;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_triggers, create_trigger))
        .routes(routes!(get_trigger, update_trigger, delete_trigger))
        .routes(routes!(rotate_secret))
        .routes(routes!(publish_version))
        .routes(routes!(unpublish))
}

/// What starts the workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TriggerKind {
    /// `POST /hooks/{id}`.
    Webhook,
    /// A cron schedule.
    Schedule,
}

/// How a webhook call proves it knows the trigger's secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HookAuth {
    /// `X-Resonant-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`,
    /// within 5 minutes, each signature accepted once.
    Hmac,
    /// `Authorization: Bearer <secret>`.
    Bearer,
}

/// What a trigger runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The workflow's published version.
    Published,
    /// The live document, as editors see it now.
    Draft,
}

/// What a schedule does with ticks it missed while the server was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Missed {
    /// Runs none of them.
    Skip,
    /// Runs one execution for the last of them.
    RunOnce,
}

impl Missed {
    fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::RunOnce => "run-once",
        }
    }
}

/// A trigger as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    /// Id.
    pub id: String,
    /// The workflow it starts.
    pub workflow_id: String,
    /// `webhook` or `schedule`.
    pub kind: TriggerKind,
    /// A label.
    pub name: Option<String>,
    /// Whether it fires.
    pub enabled: bool,
    /// `published` or `draft`.
    pub target: Target,
    /// The user its executions run as (and whose token allowance they use).
    pub run_as: String,
    /// Webhook: the URL to call (`POST`).
    pub url: Option<String>,
    /// Webhook: `hmac` or `bearer`.
    pub auth: Option<HookAuth>,
    /// Webhook: the secret, for the workflow's editors (absent for viewers).
    pub secret: Option<String>,
    /// Webhook: the secret's last four characters.
    pub secret_last4: Option<String>,
    /// Webhook: request headers passed to the input (lower-case names).
    pub pass_headers: Vec<String>,
    /// Schedule: the cron expression (5 fields, or 6 with seconds first).
    pub cron: Option<String>,
    /// Schedule: the IANA time zone.
    pub timezone: Option<String>,
    /// Schedule: `skip` or `run-once`.
    pub missed: Option<Missed>,
    /// Schedule: the next three fire times (Unix ms).
    pub next_fire_times: Vec<i64>,
    /// The last tick fired (Unix ms).
    pub last_fired_at: Option<i64>,
    /// Why its last firing started nothing.
    pub last_error: Option<String>,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
}

/// Where callers reach this server's hooks: `--hook-base-url`, else the scheme and host
/// the API request came to.
fn hook_base(app: &AppState, headers: &HeaderMap) -> String {
    if let Some(base) = &app.config.hook_base_url {
        return base.trim_end_matches('/').to_owned();
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let host = header("host").unwrap_or("localhost");
    let scheme = match header("x-forwarded-proto") {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

impl Trigger {
    fn from_row(app: &AppState, base: &str, t: TriggerRow, show_secret: bool) -> Trigger {
        let webhook = t.kind == "webhook";
        let secret = match (&t.secret, &app.cipher, show_secret) {
            (Some(sealed), Some(c), true) => c.decrypt(&t.id, sealed).ok(),
            _ => None,
        };
        let next_fire_times = match (&t.cron, t.next_fire_at) {
            (Some(cron), Some(next)) if t.enabled => {
                Schedule::parse(cron, t.timezone.as_deref().unwrap_or("UTC"))
                    .map(|s| {
                        let mut v = vec![next];
                        v.extend(s.upcoming(next, 2));
                        v
                    })
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        Trigger {
            url: webhook.then(|| format!("{base}/hooks/{}", t.id)),
            kind: if webhook {
                TriggerKind::Webhook
            } else {
                TriggerKind::Schedule
            },
            target: if t.target == "draft" {
                Target::Draft
            } else {
                Target::Published
            },
            auth: t.auth.as_deref().map(|a| {
                if a == "bearer" {
                    HookAuth::Bearer
                } else {
                    HookAuth::Hmac
                }
            }),
            missed: t.missed.as_deref().map(|m| {
                if m == "run-once" {
                    Missed::RunOnce
                } else {
                    Missed::Skip
                }
            }),
            pass_headers: t
                .pass_headers
                .as_deref()
                .and_then(|h| serde_json::from_str(h).ok())
                .unwrap_or_default(),
            secret,
            secret_last4: t.secret_last4,
            next_fire_times,
            id: t.id,
            workflow_id: t.workflow_id,
            name: t.name,
            enabled: t.enabled,
            run_as: t.run_as,
            cron: t.cron,
            timezone: t.timezone,
            last_fired_at: t.last_fired_at,
            last_error: t.last_error,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// `POST /workflows/{id}/triggers` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTrigger {
    /// `webhook` or `schedule`.
    pub kind: TriggerKind,
    /// A label (up to 200 characters).
    pub name: Option<String>,
    /// Whether it fires (default true).
    pub enabled: Option<bool>,
    /// `published` (default) or `draft`.
    pub target: Option<Target>,
    /// Webhook: `hmac` (default) or `bearer`.
    pub auth: Option<HookAuth>,
    /// Webhook: request headers passed to the input as `input.headers` (up to 20 names).
    pub pass_headers: Option<Vec<String>>,
    /// Schedule (required): a cron expression, 5 fields or 6 with seconds first.
    pub cron: Option<String>,
    /// Schedule: an IANA time zone (default `UTC`).
    pub timezone: Option<String>,
    /// Schedule: `skip` (default) or `run-once`.
    pub missed: Option<Missed>,
}

/// `PATCH /triggers/{id}` body; absent fields keep their value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateTrigger {
    /// A label (up to 200 characters).
    pub name: Option<String>,
    /// Whether it fires.
    pub enabled: Option<bool>,
    /// `published` or `draft`.
    pub target: Option<Target>,
    /// Webhook: request headers passed to the input.
    pub pass_headers: Option<Vec<String>>,
    /// Schedule: the cron expression.
    pub cron: Option<String>,
    /// Schedule: the IANA time zone.
    pub timezone: Option<String>,
    /// Schedule: `skip` or `run-once`.
    pub missed: Option<Missed>,
}

/// Refuses a schedule's fields on a webhook trigger.
fn no_schedule_fields(
    cron: &Option<String>,
    timezone: &Option<String>,
    missed: &Option<Missed>,
) -> Result<(), ApiError> {
    if cron.is_some() || timezone.is_some() || missed.is_some() {
        return Err(ApiError::bad_request(
            None,
            "cron, timezone and missed are for schedule triggers",
        ));
    }
    Ok(())
}

fn name_field(name: Option<String>) -> Result<Option<String>, ApiError> {
    match name {
        Some(n) if n.chars().count() > 200 => {
            Err(ApiError::field("name", "must be at most 200 characters"))
        }
        Some(n) if n.trim().is_empty() => Ok(None),
        other => Ok(other),
    }
}

fn pass_headers_field(headers: Vec<String>) -> Result<String, ApiError> {
    if headers.len() > MAX_PASS_HEADERS {
        return Err(ApiError::field(
            "passHeaders",
            format!("at most {MAX_PASS_HEADERS} names"),
        ));
    }
    let mut names = Vec::with_capacity(headers.len());
    for h in headers {
        let name = h.trim().to_ascii_lowercase();
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.is_empty() {
            return Err(ApiError::field(
                "passHeaders",
                format!("{h:?} is not a header name"),
            ));
        }
        if matches!(
            name.as_str(),
            "authorization" | "cookie" | "x-resonant-signature"
        ) {
            return Err(ApiError::field(
                "passHeaders",
                format!("{name} carries credentials and is never passed on"),
            ));
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(serde_json::to_string(&names).unwrap_or_else(|_| "[]".into()))
}

/// A new webhook secret: 32 random bytes, as `whsec_` and URL-safe base64.
fn new_secret() -> String {
    use base64::Engine as _;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Seals `secret` to trigger `id`: the sealed value and its last four characters.
fn seal(app: &AppState, id: &str, secret: &str) -> Result<(String, String), ApiError> {
    let cipher = app.cipher.as_ref().ok_or_else(|| {
        ApiError::Conflict(
            "webhook triggers need the server's encryption key to keep their secret \
             (--encryption-key / RESONANT_ENCRYPTION_KEY)"
                .into(),
        )
    })?;
    Ok((cipher.encrypt(id, secret), crate::crypto::last_four(secret)))
}

/// Checks a schedule and gives its first tick after now.
fn schedule_field(cron: &str, tz: &str) -> Result<i64, ApiError> {
    let s = Schedule::parse(cron, tz).map_err(|e| {
        let field = if e.contains("time zone") {
            "timezone"
        } else {
            "cron"
        };
        ApiError::field(field, e)
    })?;
    s.next_after(now_ms())
        .ok_or_else(|| ApiError::field("cron", "the expression never fires"))
}

/// A trigger the caller can see, its workflow and the caller's role there.
async fn visible_trigger(
    app: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(TriggerRow, Workflow, Role), ApiError> {
    if !db::valid_id(id) {
        return Err(ApiError::NotFound);
    }
    let t = store::trigger(&app.db, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let (wf, role) = visible(app, caller, &t.workflow_id).await?;
    Ok((t, wf, role))
}

/// A workflow's triggers (anyone who can see it; the secrets only to editors).
#[utoipa::path(get, path = "/api/v1/workflows/{id}/triggers", tag = "triggers",
    params(("id" = String, Path, description = "Workflow id")),
    responses((status = 200, body = Page<Trigger>)))]
async fn list_triggers(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Page<Trigger>>, ApiError> {
    let base = hook_base(&app, &headers);
    let (_, role) = visible(&app, &caller, &id).await?;
    let show = role.allows(Action::Edit);
    let items = store::triggers(&app.db, &id)
        .await?
        .into_iter()
        .map(|t| Trigger::from_row(&app, &base, t, show))
        .collect();
    // At most MAX_TRIGGERS: one page holds them all.
    Ok(axum::Json(Page {
        items,
        next_cursor: None,
    }))
}

/// Adds a trigger (owner, admin or member: its executions run as the caller). A webhook
/// trigger gets a fresh secret, shown in the response; it needs the server's encryption key
/// (409 without).
#[utoipa::path(post, path = "/api/v1/workflows/{id}/triggers", tag = "triggers",
    params(("id" = String, Path, description = "Workflow id")),
    request_body = CreateTrigger,
    responses((status = 201, body = Trigger)))]
async fn create_trigger(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<CreateTrigger>,
) -> Result<(StatusCode, axum::Json<Trigger>), ApiError> {
    let (wf, role) = visible(&app, &caller, &id).await?;
    require(role, Action::Execute)?;
    let name = name_field(body.name)?;
    let now = now_ms();
    let trigger_id = new_id();
    let mut row = TriggerRow {
        id: trigger_id.clone(),
        workflow_id: wf.id.clone(),
        workspace_id: wf.workspace_id.clone(),
        kind: String::new(),
        name,
        enabled: body.enabled.unwrap_or(true),
        target: if body.target == Some(Target::Draft) {
            "draft".into()
        } else {
            "published".into()
        },
        run_as: caller.id().to_owned(),
        auth: None,
        secret: None,
        secret_last4: None,
        pass_headers: None,
        cron: None,
        timezone: None,
        missed: None,
        next_fire_at: None,
        last_fired_at: None,
        last_error: None,
        created_at: now,
        updated_at: now,
    };
    match body.kind {
        TriggerKind::Webhook => {
            no_schedule_fields(&body.cron, &body.timezone, &body.missed)?;
            let (sealed, last4) = seal(&app, &trigger_id, &new_secret())?;
            row.kind = "webhook".into();
            row.auth = Some(match body.auth.unwrap_or(HookAuth::Hmac) {
                HookAuth::Hmac => "hmac".into(),
                HookAuth::Bearer => "bearer".into(),
            });
            row.secret = Some(sealed);
            row.secret_last4 = Some(last4);
            row.pass_headers = Some(pass_headers_field(body.pass_headers.unwrap_or_default())?);
        }
        TriggerKind::Schedule => {
            if body.auth.is_some() || body.pass_headers.is_some() {
                return Err(ApiError::bad_request(
                    None,
                    "auth and passHeaders are for webhook triggers",
                ));
            }
            let cron = body
                .cron
                .ok_or_else(|| ApiError::field("cron", "required for a schedule"))?;
            let tz = body.timezone.unwrap_or_else(|| "UTC".into());
            row.next_fire_at = Some(schedule_field(&cron, &tz)?);
            row.kind = "schedule".into();
            row.cron = Some(cron);
            row.timezone = Some(tz);
            row.missed = Some(body.missed.unwrap_or(Missed::Skip).as_str().into());
        }
    }
    if store::count_triggers(&app.db, &wf.id).await? >= MAX_TRIGGERS {
        return Err(ApiError::QuotaExceeded(format!(
            "a workflow may have at most {MAX_TRIGGERS} triggers"
        )));
    }
    let row = store::insert_trigger(&app.db, &row).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(Trigger::from_row(
            &app,
            &hook_base(&app, &headers),
            row,
            true,
        )),
    ))
}

/// One trigger.
#[utoipa::path(get, path = "/api/v1/triggers/{id}", tag = "triggers",
    params(("id" = String, Path, description = "Trigger id")),
    responses((status = 200, body = Trigger)))]
async fn get_trigger(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Trigger>, ApiError> {
    let (t, _, role) = visible_trigger(&app, &caller, &id).await?;
    Ok(axum::Json(Trigger::from_row(
        &app,
        &hook_base(&app, &headers),
        t,
        role.allows(Action::Edit),
    )))
}

/// Changes a trigger (owner, admin or member). A changed schedule starts from its next
/// tick after now.
#[utoipa::path(patch, path = "/api/v1/triggers/{id}", tag = "triggers",
    params(("id" = String, Path, description = "Trigger id")),
    request_body = UpdateTrigger,
    responses((status = 200, body = Trigger)))]
async fn update_trigger(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<UpdateTrigger>,
) -> Result<axum::Json<Trigger>, ApiError> {
    let (mut t, _, role) = visible_trigger(&app, &caller, &id).await?;
    require(role, Action::Execute)?;
    let schedule = t.kind == "schedule";
    if schedule && body.pass_headers.is_some() {
        return Err(ApiError::field("passHeaders", "is for webhook triggers"));
    }
    if !schedule {
        no_schedule_fields(&body.cron, &body.timezone, &body.missed)?;
    }
    if body.name.is_some() {
        t.name = name_field(body.name)?;
    }
    if let Some(target) = body.target {
        t.target = if target == Target::Draft {
            "draft".into()
        } else {
            "published".into()
        };
    }
    if let Some(h) = body.pass_headers {
        t.pass_headers = Some(pass_headers_field(h)?);
    }
    if let Some(m) = body.missed {
        t.missed = Some(m.as_str().into());
    }
    let rescheduled = body.cron.is_some() || body.timezone.is_some();
    if let Some(c) = body.cron {
        t.cron = Some(c);
    }
    if let Some(tz) = body.timezone {
        t.timezone = Some(tz);
    }
    let enabling = body.enabled == Some(true) && !t.enabled;
    if let Some(e) = body.enabled {
        t.enabled = e;
    }
    if schedule && (rescheduled || enabling) {
        // From now: ticks while it was off, or of the old expression, are not owed.
        t.next_fire_at = Some(schedule_field(
            t.cron.as_deref().unwrap_or_default(),
            t.timezone.as_deref().unwrap_or("UTC"),
        )?);
    }
    let row = store::update_trigger(&app.db, &t)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(axum::Json(Trigger::from_row(
        &app,
        &hook_base(&app, &headers),
        row,
        role.allows(Action::Edit),
    )))
}

/// Removes a trigger (owner, admin or member). Its executions stay in the history.
#[utoipa::path(delete, path = "/api/v1/triggers/{id}", tag = "triggers",
    params(("id" = String, Path, description = "Trigger id")),
    responses((status = 204, description = "Deleted")))]
async fn delete_trigger(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (t, _, role) = visible_trigger(&app, &caller, &id).await?;
    require(role, Action::Execute)?;
    if !store::delete_trigger(&app.db, &t.id).await? {
        return Err(ApiError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Gives a webhook trigger a new secret (owner, admin or member); the old one stops
/// working at once. Returns the trigger with its new secret.
#[utoipa::path(post, path = "/api/v1/triggers/{id}/rotate-secret", tag = "triggers",
    params(("id" = String, Path, description = "Trigger id")),
    responses((status = 200, body = Trigger)))]
async fn rotate_secret(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Trigger>, ApiError> {
    let (mut t, _, role) = visible_trigger(&app, &caller, &id).await?;
    require(role, Action::Execute)?;
    if t.kind != "webhook" {
        return Err(ApiError::Conflict(
            "only a webhook trigger has a secret".into(),
        ));
    }
    let (sealed, last4) = seal(&app, &t.id, &new_secret())?;
    t.secret = Some(sealed);
    t.secret_last4 = Some(last4);
    let row = store::update_trigger(&app.db, &t)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(axum::Json(Trigger::from_row(
        &app,
        &hook_base(&app, &headers),
        row,
        true,
    )))
}

/// The published version of a workflow.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Published {
    /// The workflow.
    pub workflow_id: String,
    /// The version its triggers run (`null`: none).
    pub published_version_id: Option<String>,
    /// Its number.
    pub version: Option<i64>,
}

/// Publishes a saved version (editors): the workflow's triggers run it from now on (those
/// set to `published`). The version must be a valid workflow (422 with its problems).
#[utoipa::path(post, path = "/api/v1/workflows/{id}/versions/{version}/publish", tag = "versions",
    params(("id" = String, Path, description = "Workflow id"),
           ("version" = i64, Path, description = "Version number")),
    responses((status = 200, body = Published),
              (status = 422, body = super::ErrorBody, description = "The version is not a valid workflow; `problems` names each block at fault")))]
async fn publish_version(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, version)): Path<(String, i64)>,
) -> Result<axum::Json<Published>, ApiError> {
    let (_, role) = visible(&app, &caller, &id).await?;
    require(role, Action::Edit)?;
    let (info, state) = super::workflows::find_version(&app, &id, version).await?;
    let wf = id.clone();
    let content = tokio::task::spawn_blocking(move || crate::content::to_json(&state))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, workflow = %wf, version, "reading a version panicked");
            ApiError::Internal
        })?
        .map_err(|e| super::workflows::content_error(e, &id))?;
    let graph = serde_json::json!({
        "blocks": content["blocks"],
        "connections": content["connections"],
    });
    crate::engine::validate(&graph).map_err(ApiError::InvalidWorkflow)?;
    store::publish(&app.db, &id, Some((&info.id, &graph.to_string()))).await?;
    Ok(axum::Json(Published {
        workflow_id: id,
        published_version_id: Some(info.id),
        version: Some(info.version),
    }))
}

/// Unpublishes (editors): triggers set to `published` start nothing until a version is
/// published again.
#[utoipa::path(delete, path = "/api/v1/workflows/{id}/published", tag = "versions",
    params(("id" = String, Path, description = "Workflow id")),
    responses((status = 200, body = Published)))]
async fn unpublish(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Published>, ApiError> {
    let (_, role) = visible(&app, &caller, &id).await?;
    require(role, Action::Edit)?;
    store::publish(&app.db, &id, None).await?;
    Ok(axum::Json(Published {
        workflow_id: id,
        published_version_id: None,
        version: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_fresh_and_header_lists_are_cleaned() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with("whsec_") && a.len() == 6 + 43, "{a}");
        assert_eq!(
            pass_headers_field(vec!["X-GitHub-Event".into(), "x-github-event".into()]).unwrap(),
            r#"["x-github-event"]"#
        );
        assert!(pass_headers_field(vec!["Authorization".into()]).is_err());
        assert!(pass_headers_field(vec!["bad header".into()]).is_err());
    }
}
