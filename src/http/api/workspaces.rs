//! Workspaces and their members; invitations by email.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{require, role_in, text, ApiError, Caller, Json, Page, PageQuery, Path, Query};
use crate::db::{self, Action, Invitation, Member, MemberChange, Role, Workspace};
use crate::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_workspaces, create_workspace))
        .routes(routes!(get_workspace, rename_workspace))
        .routes(routes!(list_members, add_member))
        .routes(routes!(change_member, remove_member))
        .routes(routes!(list_invitations))
        .routes(routes!(revoke_invitation))
        .routes(routes!(accept_invitation))
        .routes(routes!(me))
        .routes(routes!(billing))
}

/// `POST /workspaces` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWorkspace {
    /// Display name (1–100 characters).
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub name: String,
    /// Unique URL name (lowercase letters, digits, dashes; 3–48 characters). Generated from
    /// the name when absent.
    #[schema(pattern = r"^[a-z0-9][a-z0-9-]{1,46}[a-z0-9]$")]
    pub slug: Option<String>,
}

/// `PATCH /workspaces/{id}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RenameWorkspace {
    /// New display name.
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub name: String,
}

/// A workspace's plan and its owner's subscription.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Billing {
    /// The workspace's plan.
    pub plan: String,
    /// The paying owner's subscription status.
    pub subscription_status: Option<String>,
    /// The owner's subscription plan.
    pub subscription_plan: Option<String>,
    /// Tokens used this period.
    pub tokens_used: i64,
    /// Tokens the plan allows.
    pub tokens_limit: i64,
}

/// The workspace's billing (owner only).
#[utoipa::path(get, path = "/api/v1/workspaces/{id}/billing", tag = "workspaces",
    params(("id" = String, Path, description = "Workspace id")),
    responses((status = 200, body = Billing)))]
async fn billing(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Billing>, ApiError> {
    let role = role_in(&app, &caller, &id).await?;
    require(role, Action::Billing)?;
    let ws = db::workspace_for_user(&app.db, &id, caller.id())
        .await?
        .ok_or(ApiError::NotFound)?;
    let owner = db::user_by_id(&app.db, &ws.owner_id).await?;
    Ok(axum::Json(Billing {
        plan: ws.plan,
        subscription_status: owner.as_ref().and_then(|o| o.subscription_status.clone()),
        subscription_plan: owner.as_ref().and_then(|o| o.subscription_plan.clone()),
        tokens_used: owner.as_ref().map_or(0, |o| o.tokens_used),
        tokens_limit: owner.as_ref().map_or(0, |o| o.tokens_limit),
    }))
}

/// The caller.
#[utoipa::path(get, path = "/api/v1/me", tag = "users", responses((status = 200, body = db::User)))]
async fn me(State(app): State<AppState>, caller: Caller) -> Result<axum::Json<db::User>, ApiError> {
    // Read fresh: the sign-in cache does not follow token counts as executions use them.
    let user = db::user_by_id(&app.db, caller.id()).await?;
    Ok(axum::Json(user.unwrap_or(caller.0.user)))
}

/// Workspaces the caller belongs to, newest first.
#[utoipa::path(get, path = "/api/v1/workspaces", tag = "workspaces", params(PageQuery),
    responses((status = 200, body = Page<Workspace>)))]
async fn list_workspaces(
    State(app): State<AppState>,
    caller: Caller,
    Query(page): Query<PageQuery>,
) -> Result<axum::Json<Page<Workspace>>, ApiError> {
    let limit = page.limit()?;
    let items = db::workspaces_for_user(&app.db, caller.id(), page.id_cursor()?, limit).await?;
    Ok(axum::Json(Page::new(items, limit, |w| w.id.clone())))
}

/// Creates a workspace; the caller is its owner.
#[utoipa::path(post, path = "/api/v1/workspaces", tag = "workspaces", request_body = CreateWorkspace,
    responses((status = 201, body = Workspace)))]
async fn create_workspace(
    State(app): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateWorkspace>,
) -> Result<(StatusCode, axum::Json<Workspace>), ApiError> {
    let name = text("name", &body.name, 100)?;
    let slug = match body.slug {
        Some(slug) => {
            let ok = (3..=48).contains(&slug.len())
                && slug
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !slug.starts_with('-')
                && !slug.ends_with('-');
            if !ok {
                return Err(ApiError::field(
                    "slug",
                    "3-48 lowercase letters, digits and dashes, not starting or ending with a dash",
                ));
            }
            slug
        }
        None => slugify(&name),
    };
    let ws = db::create_workspace(&app.db, caller.id(), &name, &slug).await?;
    Ok((StatusCode::CREATED, axum::Json(ws)))
}

/// A slug from a name, with a random suffix so that two "Marketing" workspaces can coexist.
fn slugify(name: &str) -> String {
    let mut slug: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    slug = slug
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    slug.truncate(32);
    let slug = slug.trim_end_matches('-');
    let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    if slug.is_empty() {
        format!("ws-{suffix}")
    } else {
        format!("{slug}-{suffix}")
    }
}

/// One workspace.
#[utoipa::path(get, path = "/api/v1/workspaces/{id}", tag = "workspaces",
    params(("id" = String, Path, description = "Workspace id")),
    responses((status = 200, body = Workspace)))]
async fn get_workspace(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Workspace>, ApiError> {
    role_in(&app, &caller, &id).await?;
    let ws = db::workspace_for_user(&app.db, &id, caller.id())
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(axum::Json(ws))
}

/// Renames a workspace (owner or admin).
#[utoipa::path(patch, path = "/api/v1/workspaces/{id}", tag = "workspaces",
    params(("id" = String, Path, description = "Workspace id")), request_body = RenameWorkspace,
    responses((status = 200, body = Workspace)))]
async fn rename_workspace(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<RenameWorkspace>,
) -> Result<axum::Json<Workspace>, ApiError> {
    let role = role_in(&app, &caller, &id).await?;
    require(role, Action::ManageMembers)?;
    let name = text("name", &body.name, 100)?;
    db::rename_workspace(&app.db, &id, &name).await?;
    let ws = db::workspace_for_user(&app.db, &id, caller.id())
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(axum::Json(ws))
}

/// A workspace's members.
#[utoipa::path(get, path = "/api/v1/workspaces/{id}/members", tag = "members",
    params(("id" = String, Path, description = "Workspace id"), PageQuery),
    responses((status = 200, body = Page<Member>)))]
async fn list_members(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<axum::Json<Page<Member>>, ApiError> {
    role_in(&app, &caller, &id).await?;
    let limit = page.limit()?;
    let items = db::members(&app.db, &id, page.id_cursor()?, limit).await?;
    Ok(axum::Json(Page::new(items, limit, |m| m.user_id.clone())))
}

/// `POST /workspaces/{id}/members` body: whom to invite, by user id or email.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddMember {
    /// An existing user's id: the invitation goes to the user's email address.
    pub user_id: Option<String>,
    /// An email address to invite.
    #[schema(format = Email, max_length = 254)]
    pub email: Option<String>,
    /// The role to grant on acceptance (admin, member or viewer).
    pub role: Role,
}

/// What adding a member did: always an invitation, whether or not the address has an
/// account (so the answer tells nothing about who has one).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddMemberResult {
    /// The invitation.
    pub invitation: Invitation,
    /// Whether the invitation was emailed (Resend configured).
    pub emailed: bool,
    /// The accept link (also in the email), to share another way if need be: only a user
    /// signed in with the invited address can accept it.
    pub accept_url: String,
}

/// How long an invitation link stays valid.
const INVITATION_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

/// Invites someone (owner or admin). Membership is by invitation only: nobody joins a
/// workspace without accepting, and the answer is 202 with an invitation whether or not the
/// address has an account. Owners are made by promotion after joining.
#[utoipa::path(post, path = "/api/v1/workspaces/{id}/members", tag = "members",
    params(("id" = String, Path, description = "Workspace id")), request_body = AddMember,
    responses((status = 202, body = AddMemberResult, description = "Invitation created (and emailed when Resend is configured)"),
              (status = 502, body = super::ErrorBody, description = "The email could not be sent")))]
async fn add_member(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<AddMember>,
) -> Result<Response, ApiError> {
    let role = role_in(&app, &caller, &id).await?;
    require(role, Action::ManageMembers)?;
    if body.role == Role::Owner {
        return Err(ApiError::field(
            "role",
            "invite as admin, member or viewer; promote to owner after joining",
        ));
    }
    let email = match (&body.user_id, &body.email) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(ApiError::field(
                "userId",
                "give exactly one of userId and email",
            ))
        }
        (Some(user_id), None) => {
            let user = if db::valid_id(user_id) {
                db::user_by_id(&app.db, user_id).await?
            } else {
                None
            };
            let user = user.ok_or_else(|| ApiError::field("userId", "no such user"))?;
            if db::member_role(&app.db, &id, &user.id).await?.is_some() {
                return Err(ApiError::Conflict("already a member".into()));
            }
            user.email.ok_or_else(|| {
                ApiError::field("userId", "this user has no email address to invite")
            })?
        }
        (None, Some(email)) => {
            let email = email.trim();
            if !valid_email(email) {
                return Err(ApiError::field("email", "not an email address"));
            }
            email.to_string()
        }
    };
    let ws = db::workspace_for_user(&app.db, &id, caller.id())
        .await?
        .ok_or(ApiError::NotFound)?;
    let secret = invitation_secret();
    let invitation = db::create_invitation(
        &app.db,
        &id,
        &email,
        body.role,
        &hash_secret(&secret),
        caller.id(),
        INVITATION_TTL_MS,
    )
    .await?;
    let link = format!(
        "{}/invite?token={secret}",
        app.config.public_url.trim_end_matches('/')
    );
    let emailed = app.mailer.is_configured();
    if emailed {
        let inviter = caller.0.user.name.clone().or(caller.0.user.email.clone());
        if let Err(e) = app
            .mailer
            .send_invitation(&invitation.id, &email, &ws.name, inviter.as_deref(), &link)
            .await
        {
            // No email, no invitation: the admin sees the failure and can retry.
            db::delete_invitation(&app.db, &invitation.id).await?;
            return Err(e.into());
        }
    }
    let result = AddMemberResult {
        invitation,
        emailed,
        accept_url: link,
    };
    Ok((StatusCode::ACCEPTED, axum::Json(result)).into_response())
}

/// A workspace's pending invitations (owner or admin).
#[utoipa::path(get, path = "/api/v1/workspaces/{id}/invitations", tag = "members",
    params(("id" = String, Path, description = "Workspace id"), PageQuery),
    responses((status = 200, body = Page<Invitation>)))]
async fn list_invitations(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<axum::Json<Page<Invitation>>, ApiError> {
    let role = role_in(&app, &caller, &id).await?;
    require(role, Action::ManageMembers)?;
    let limit = page.limit()?;
    let items = db::invitations(&app.db, &id, page.id_cursor()?, limit).await?;
    Ok(axum::Json(Page::new(items, limit, |i| i.id.clone())))
}

/// Revokes a pending invitation (owner or admin): its link stops working.
#[utoipa::path(delete, path = "/api/v1/workspaces/{id}/invitations/{invitation_id}", tag = "members",
    params(("id" = String, Path, description = "Workspace id"), ("invitation_id" = String, Path, description = "Invitation id")),
    responses((status = 204, description = "Revoked")))]
async fn revoke_invitation(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, invitation)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let role = role_in(&app, &caller, &id).await?;
    require(role, Action::ManageMembers)?;
    if !db::valid_id(&invitation) || !db::revoke_invitation(&app.db, &id, &invitation).await? {
        return Err(ApiError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT)
}

fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn invitation_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `PATCH /workspaces/{id}/members/{userId}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChangeMember {
    /// The new role.
    pub role: Role,
}

/// Changes a member's role (owner or admin; only owners touch owners). The last owner
/// cannot be demoted. Live sockets of the member follow at once.
#[utoipa::path(patch, path = "/api/v1/workspaces/{id}/members/{user_id}", tag = "members",
    params(("id" = String, Path, description = "Workspace id"), ("user_id" = String, Path, description = "User id")),
    request_body = ChangeMember, responses((status = 200, body = Member)))]
async fn change_member(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, user)): Path<(String, String)>,
    Json(body): Json<ChangeMember>,
) -> Result<axum::Json<Member>, ApiError> {
    let role = role_in(&app, &caller, &id).await?;
    require(role, Action::ManageMembers)?;
    let target = db::member_role(&app.db, &id, &user)
        .await?
        .ok_or(ApiError::NotFound)?;
    if (target == Role::Owner || body.role == Role::Owner) && role != Role::Owner {
        return Err(ApiError::Forbidden(
            "only an owner can change an owner's role or make owners".into(),
        ));
    }
    match db::change_member(&app.db, &id, &user, Some(body.role)).await? {
        MemberChange::Done => {}
        MemberChange::NotMember => return Err(ApiError::NotFound),
        MemberChange::LastOwner => {
            return Err(ApiError::Conflict(
                "the last owner cannot be demoted".into(),
            ))
        }
    }
    if !body.role.allows(Action::ManageMembers) {
        // Demoted below admin: the invitations they sent go with the right to send them.
        db::revoke_invitations_by(&app.db, &id, &user).await?;
    }
    app.access.changed(&user, &id, Some(body.role));
    let member = db::member(&app.db, &id, &user)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(axum::Json(member))
}

/// Removes a member (owner or admin; any member may remove itself). The last owner cannot
/// be removed. The member's live sockets are closed with 4403.
#[utoipa::path(delete, path = "/api/v1/workspaces/{id}/members/{user_id}", tag = "members",
    params(("id" = String, Path, description = "Workspace id"), ("user_id" = String, Path, description = "User id")),
    responses((status = 204, description = "Removed")))]
async fn remove_member(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let role = role_in(&app, &caller, &id).await?;
    if user != caller.id() {
        require(role, Action::ManageMembers)?;
        let target = db::member_role(&app.db, &id, &user)
            .await?
            .ok_or(ApiError::NotFound)?;
        if target == Role::Owner && role != Role::Owner {
            return Err(ApiError::Forbidden(
                "only an owner can remove an owner".into(),
            ));
        }
    }
    match db::change_member(&app.db, &id, &user, None).await? {
        MemberChange::Done => {}
        MemberChange::NotMember => return Err(ApiError::NotFound),
        MemberChange::LastOwner => {
            return Err(ApiError::Conflict(
                "the last owner cannot be removed".into(),
            ))
        }
    }
    // A removed admin must not come back through an invitation they sent themselves.
    db::revoke_invitations_by(&app.db, &id, &user).await?;
    app.access.changed(&user, &id, None);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /invitations/accept` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AcceptInvitation {
    /// The `token` of the accept link.
    pub token: String,
}

/// Accepts an invitation: the caller becomes a member of its workspace. The caller must be
/// signed in with the invited address (the token's email claim, unless marked unverified,
/// or the account's email), and the inviter must still be allowed to invite.
#[utoipa::path(post, path = "/api/v1/invitations/accept", tag = "members", request_body = AcceptInvitation,
    responses((status = 200, body = Workspace)))]
async fn accept_invitation(
    State(app): State<AppState>,
    caller: Caller,
    Json(body): Json<AcceptInvitation>,
) -> Result<axum::Json<Workspace>, ApiError> {
    let emails: Vec<String> = [caller.0.email.clone(), caller.0.user.email.clone()]
        .into_iter()
        .flatten()
        .collect();
    let hash = hash_secret(body.token.trim());
    let ws = match db::accept_invitation(&app.db, &hash, caller.id(), &emails).await? {
        db::Acceptance::Joined(ws) => ws,
        db::Acceptance::Unknown => return Err(ApiError::NotFound),
        db::Acceptance::WrongEmail => {
            return Err(ApiError::Forbidden(
                "this invitation is for another email address: sign in with the invited one".into(),
            ))
        }
        db::Acceptance::InviterLost => {
            return Err(ApiError::Forbidden(
                "this invitation was revoked: its sender may no longer invite".into(),
            ))
        }
    };
    let workspace = db::workspace_for_user(&app.db, &ws, caller.id())
        .await?
        .ok_or(ApiError::NotFound)?;
    if let Some(role) = Role::parse(&workspace.role) {
        app.access.changed(caller.id(), &ws, Some(role));
    }
    Ok(axum::Json(workspace))
}
