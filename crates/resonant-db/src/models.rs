//! Rows of the relational tables, as the REST API shows them (camelCase JSON).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A member's role in a workspace: the seed's authorization matrix.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees workflows and presence; cannot change anything.
    Viewer,
    /// Edits and executes workflows.
    Member,
    /// Also deletes workflows and manages members.
    Admin,
    /// Also manages billing; every workspace keeps at least one.
    Owner,
}

impl Role {
    /// The name stored in the database and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    /// Parses a stored role name.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "owner" => Role::Owner,
            "admin" => Role::Admin,
            "member" => Role::Member,
            "viewer" => Role::Viewer,
            _ => return None,
        })
    }

    /// Whether this role may do `action`.
    pub fn allows(self, action: Action) -> bool {
        match action {
            Action::View => true,
            Action::Edit | Action::Execute => self >= Role::Member,
            Action::Delete | Action::ManageMembers => self >= Role::Admin,
            Action::Billing => self == Role::Owner,
        }
    }
}

/// What a caller wants to do; checked against its role with [`Role::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read a workflow (sync read, REST read).
    View,
    /// Change a workflow (sync write, REST write).
    Edit,
    /// Delete a workflow.
    Delete,
    /// Run a workflow.
    Execute,
    /// Add, remove and re-role members; workspace settings and provider keys.
    ManageMembers,
    /// Subscription and plan.
    Billing,
}

/// A user, created on first sign-in and kept in sync by the Clerk webhook.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// Our id.
    pub id: String,
    /// The identity provider's user id (the token's `sub`; Clerk's user id).
    pub external_id: String,
    /// Primary email address.
    pub email: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Avatar URL.
    pub image_url: Option<String>,
    /// Stripe subscription status (active, past_due, canceled…).
    pub subscription_status: Option<String>,
    /// Plan name (free, creator, pro, team, enterprise).
    pub subscription_plan: Option<String>,
    /// Tokens used in the current period.
    pub tokens_used: i64,
    /// Tokens allowed by the plan.
    pub tokens_limit: i64,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
}

/// A workspace, with the caller's role in it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Workspace {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Unique URL-safe name.
    pub slug: String,
    /// The paying owner: its creator, or after the creator left (or was demoted) the
    /// longest-standing owner.
    pub owner_id: String,
    /// Plan (free, creator, pro, team, enterprise).
    pub plan: String,
    /// The caller's role.
    pub role: String,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
}

/// A workspace member.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// The user's id.
    pub user_id: String,
    /// The user's email.
    pub email: Option<String>,
    /// The user's name.
    pub name: Option<String>,
    /// Role in the workspace.
    pub role: String,
    /// When the user joined (Unix ms).
    pub joined_at: i64,
}

/// An invitation to join a workspace, sent to an email address: only a user signed in with
/// that address may accept it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Invitation {
    /// Id.
    pub id: String,
    /// The workspace.
    pub workspace_id: String,
    /// Invited address.
    pub email: String,
    /// Role granted on acceptance.
    pub role: String,
    /// Who invited (a user id); the invitation is revoked if they lose the right to invite.
    pub invited_by: String,
    /// Expiry (Unix ms).
    pub expires_at: i64,
    /// Creation time (Unix ms).
    pub created_at: i64,
}

/// A workflow's metadata; its content lives in the collaborative document.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Workflow {
    /// Id; the collaborative room is `workflow-<id>`.
    pub id: String,
    /// The workspace.
    pub workspace_id: String,
    /// The user who created it.
    pub created_by: String,
    /// Display name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Whether it is a template.
    pub is_template: bool,
    /// Whether anyone may see it.
    pub is_public: bool,
    /// draft, active or archived.
    pub status: String,
    /// The latest named version's number (0 before the first).
    pub version: i64,
    /// The version the document was last restored from.
    pub parent_version_id: Option<String>,
    /// The version its triggers run (`None`: none is published; triggers set to `draft`
    /// run the live document).
    pub published_version_id: Option<String>,
    /// How many times it ran.
    pub execution_count: i64,
    /// When it last ran (Unix ms).
    pub last_executed_at: Option<i64>,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
}

/// A named version of a workflow (without its content).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    /// Id.
    pub id: String,
    /// The workflow.
    pub workflow_id: String,
    /// Number, 1, 2, … per workflow.
    pub version: i64,
    /// Name.
    pub name: Option<String>,
    /// Message.
    pub message: Option<String>,
    /// Author.
    pub created_by: String,
    /// Creation time (Unix ms).
    pub created_at: i64,
}

/// A comment on a workflow or one of its blocks.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Comment {
    /// Id.
    pub id: String,
    /// The workflow.
    pub workflow_id: String,
    /// Author.
    pub user_id: String,
    /// The block it is attached to, if any.
    pub block_id: Option<String>,
    /// Text.
    pub content: String,
    /// The comment it replies to.
    pub parent_id: Option<String>,
    /// Whether the thread is resolved.
    pub resolved: bool,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
}

/// The room name of a workflow's document: the sync layer knows documents only by room.
pub fn room_of(workflow: &str) -> String {
    format!("{ROOM_PREFIX}{workflow}")
}

/// The workflow whose document `room` is, when the room is named for a valid workflow id.
pub fn workflow_of_room(room: &str) -> Option<&str> {
    room.strip_prefix(ROOM_PREFIX)
        .filter(|id| super::valid_id(id))
}

/// What every workflow's room name starts with.
const ROOM_PREFIX: &str = "workflow-";
