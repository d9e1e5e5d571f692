//! The queries, one function each, shared by both backends through [`with_pool!`].

use super::{
    new_id, now_ms, Comment, DbError, Invitation, Member, Role, User, VersionInfo, Workflow,
    Workspace,
};
use crate::with_pool;
use resonant_store::Db;

type Result<T> = std::result::Result<T, DbError>;

const USER_COLS: &str = "id, external_id, email, name, image_url, subscription_status, \
    subscription_plan, tokens_used, tokens_limit, created_at, updated_at";

const WORKFLOW_COLS: &str = "id, workspace_id, created_by, name, description, is_template, \
    is_public, status, version, parent_version_id, published_version_id, execution_count, \
    last_executed_at, created_at, updated_at";

/// What the identity provider told us about a user.
#[derive(Debug, Clone, Default)]
pub struct UserProfile {
    /// Email, if known.
    pub email: Option<String>,
    /// Display name, if known.
    pub name: Option<String>,
    /// Avatar URL, if known.
    pub image_url: Option<String>,
}

/// A user row with its deletion mark (a deleted user keeps its row for history).
#[derive(sqlx::FromRow)]
struct UserWithDeletion {
    #[sqlx(flatten)]
    user: User,
    deleted_at: Option<i64>,
}

/// A user looked up by the identity provider's id, with whether it was deleted there.
pub async fn user_by_external(db: &Db, external_id: &str) -> Result<Option<(User, bool)>> {
    let sql = format!("SELECT {USER_COLS}, deleted_at FROM users WHERE external_id = $1");
    with_pool!(db, p => {
        let row: Option<UserWithDeletion> = sqlx::query_as(&sql).bind(external_id).fetch_optional(p).await?;
        Ok(row.map(|r| (r.user, r.deleted_at.is_some())))
    })
}

/// Creates the user on first sign-in, or updates the profile fields that are given (a
/// missing field never erases a known one). Deleted users come back only through
/// `restore` (the Clerk webhook), never through a token.
pub async fn upsert_user(
    db: &Db,
    external_id: &str,
    profile: &UserProfile,
    tokens_limit: i64,
    restore: bool,
) -> Result<User> {
    let now = now_ms();
    let sql = format!(
        "INSERT INTO users (id, external_id, email, name, image_url, tokens_used, tokens_limit, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $7) \
         ON CONFLICT (external_id) DO UPDATE SET \
           email = COALESCE(excluded.email, users.email), \
           name = COALESCE(excluded.name, users.name), \
           image_url = COALESCE(excluded.image_url, users.image_url), \
           deleted_at = CASE WHEN $8 THEN NULL ELSE users.deleted_at END, \
           updated_at = excluded.updated_at \
         RETURNING {USER_COLS}"
    );
    with_pool!(db, p => Ok(sqlx::query_as(&sql)
        .bind(new_id())
        .bind(external_id)
        .bind(&profile.email)
        .bind(&profile.name)
        .bind(&profile.image_url)
        .bind(tokens_limit)
        .bind(now)
        .bind(restore)
        .fetch_one(p)
        .await?))
}

/// A user by our id.
pub async fn user_by_id(db: &Db, id: &str) -> Result<Option<User>> {
    let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1 AND deleted_at IS NULL");
    with_pool!(db, p => Ok(sqlx::query_as(&sql).bind(id).fetch_optional(p).await?))
}

/// A user by email address (case-insensitive).
pub async fn user_by_email(db: &Db, email: &str) -> Result<Option<User>> {
    let sql = format!(
        "SELECT {USER_COLS} FROM users WHERE lower(email) = lower($1) AND deleted_at IS NULL ORDER BY id LIMIT 1"
    );
    with_pool!(db, p => Ok(sqlx::query_as(&sql).bind(email).fetch_optional(p).await?))
}

const WORKSPACE_COLS: &str =
    "w.id, w.name, w.slug, w.owner_id, w.plan, m.role, w.created_at, w.updated_at";

/// Creates a workspace with `owner` as its first owner.
pub async fn create_workspace(db: &Db, owner: &str, name: &str, slug: &str) -> Result<Workspace> {
    let id = new_id();
    let now = now_ms();
    with_pool!(db, p => {
        let mut tx = p.begin().await?;
        sqlx::query("INSERT INTO workspaces (id, name, slug, owner_id, plan, created_at, updated_at) VALUES ($1, $2, $3, $4, 'free', $5, $5)")
            .bind(&id).bind(name).bind(slug).bind(owner).bind(now)
            .execute(&mut *tx).await.map_err(|e| DbError::unique(e, "a workspace with this slug"))?;
        sqlx::query("INSERT INTO workspace_members (workspace_id, user_id, role, joined_at) VALUES ($1, $2, 'owner', $3)")
            .bind(&id).bind(owner).bind(now)
            .execute(&mut *tx).await?;
        tx.commit().await?;
    });
    Ok(workspace_for_user(db, &id, owner)
        .await?
        .expect("just created"))
}

/// The workspaces `user` belongs to, newest first, after `cursor` (an id).
pub async fn workspaces_for_user(
    db: &Db,
    user: &str,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<Workspace>> {
    let sql = format!(
        "SELECT {WORKSPACE_COLS} FROM workspaces w JOIN workspace_members m ON m.workspace_id = w.id \
         WHERE m.user_id = $1 AND ($2 IS NULL OR w.id < $2) ORDER BY w.id DESC LIMIT $3"
    );
    with_pool!(db, p => Ok(sqlx::query_as(&sql).bind(user).bind(cursor).bind(limit).fetch_all(p).await?))
}

/// One workspace, if `user` belongs to it.
pub async fn workspace_for_user(db: &Db, id: &str, user: &str) -> Result<Option<Workspace>> {
    let sql = format!(
        "SELECT {WORKSPACE_COLS} FROM workspaces w JOIN workspace_members m ON m.workspace_id = w.id \
         WHERE w.id = $1 AND m.user_id = $2"
    );
    with_pool!(db, p => Ok(sqlx::query_as(&sql).bind(id).bind(user).fetch_optional(p).await?))
}

/// Renames a workspace.
pub async fn rename_workspace(db: &Db, id: &str, name: &str) -> Result<()> {
    with_pool!(db, p => {
        sqlx::query("UPDATE workspaces SET name = $2, updated_at = $3 WHERE id = $1")
            .bind(id).bind(name).bind(now_ms()).execute(p).await?;
    });
    Ok(())
}

/// `user`'s role in workspace `ws`, if a member.
pub async fn member_role(db: &Db, ws: &str, user: &str) -> Result<Option<Role>> {
    with_pool!(db, p => {
        let row: Option<(String,)> = sqlx::query_as("SELECT role FROM workspace_members WHERE workspace_id = $1 AND user_id = $2")
            .bind(ws).bind(user).fetch_optional(p).await?;
        Ok(row.and_then(|(r,)| Role::parse(&r)))
    })
}

/// Every (workspace, role) of `user` (for refreshing a live socket's rights).
pub async fn memberships(db: &Db, user: &str) -> Result<Vec<(String, Role)>> {
    with_pool!(db, p => {
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT workspace_id, role FROM workspace_members WHERE user_id = $1")
            .bind(user).fetch_all(p).await?;
        Ok(rows.into_iter().filter_map(|(w, r)| Some((w, Role::parse(&r)?))).collect())
    })
}

/// A workspace's members, by user id, after `cursor`.
pub async fn members(db: &Db, ws: &str, cursor: Option<&str>, limit: i64) -> Result<Vec<Member>> {
    with_pool!(db, p => Ok(sqlx::query_as(
        "SELECT m.user_id, u.email, u.name, m.role, m.joined_at FROM workspace_members m JOIN users u ON u.id = m.user_id \
         WHERE m.workspace_id = $1 AND ($2 IS NULL OR m.user_id > $2) ORDER BY m.user_id LIMIT $3")
        .bind(ws).bind(cursor).bind(limit).fetch_all(p).await?))
}

/// Every member of a workspace as (user id, email): the people an approval may notify.
pub async fn member_emails(db: &Db, ws: &str) -> Result<Vec<(String, Option<String>)>> {
    with_pool!(db, p => Ok(sqlx::query_as(
        "SELECT u.id, u.email FROM workspace_members m JOIN users u ON u.id = m.user_id \
         WHERE m.workspace_id = $1")
        .bind(ws).fetch_all(p).await?))
}

/// One member of a workspace.
pub async fn member(db: &Db, ws: &str, user: &str) -> Result<Option<Member>> {
    with_pool!(db, p => Ok(sqlx::query_as(
        "SELECT m.user_id, u.email, u.name, m.role, m.joined_at FROM workspace_members m JOIN users u ON u.id = m.user_id \
         WHERE m.workspace_id = $1 AND m.user_id = $2")
        .bind(ws).bind(user).fetch_optional(p).await?))
}

/// Adds `user` to `ws` with `role`; [`DbError::Duplicate`] if already a member.
pub async fn add_member(db: &Db, ws: &str, user: &str, role: Role) -> Result<()> {
    with_pool!(db, p => {
        sqlx::query("INSERT INTO workspace_members (workspace_id, user_id, role, joined_at) VALUES ($1, $2, $3, $4)")
            .bind(ws).bind(user).bind(role.as_str()).bind(now_ms())
            .execute(p).await.map_err(|e| DbError::unique(e, "this member"))?;
    });
    Ok(())
}

/// The outcome of a role change or removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    /// Done.
    Done,
    /// The user is not a member.
    NotMember,
    /// It would leave the workspace without an owner.
    LastOwner,
}

/// Changes a member's role (`Some`) or removes the member (`None`), refusing to leave the
/// workspace without an owner.
pub async fn change_member(
    db: &Db,
    ws: &str,
    user: &str,
    role: Option<Role>,
) -> Result<MemberChange> {
    let now = now_ms();
    with_pool!(db, p => {
        let mut tx = p.begin().await?;
        // Taking the workspace row first serialises concurrent changes to its members, so
        // two owners demoting each other cannot both see "another owner remains".
        sqlx::query("UPDATE workspaces SET updated_at = $2 WHERE id = $1").bind(ws).bind(now).execute(&mut *tx).await?;
        let current: Option<(String,)> = sqlx::query_as("SELECT role FROM workspace_members WHERE workspace_id = $1 AND user_id = $2")
            .bind(ws).bind(user).fetch_optional(&mut *tx).await?;
        let Some((current,)) = current else { return Ok(MemberChange::NotMember) };
        if current == "owner" && role != Some(Role::Owner) {
            let (owners,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM workspace_members WHERE workspace_id = $1 AND role = 'owner'")
                .bind(ws).fetch_one(&mut *tx).await?;
            if owners <= 1 {
                return Ok(MemberChange::LastOwner);
            }
        }
        match role {
            Some(role) => sqlx::query("UPDATE workspace_members SET role = $3 WHERE workspace_id = $1 AND user_id = $2")
                .bind(ws).bind(user).bind(role.as_str()).execute(&mut *tx).await?,
            None => sqlx::query("DELETE FROM workspace_members WHERE workspace_id = $1 AND user_id = $2")
                .bind(ws).bind(user).execute(&mut *tx).await?,
        };
        // The paying owner (billing) is an owner still: when it leaves or is demoted, the
        // longest-standing remaining owner takes over.
        sqlx::query(
            "UPDATE workspaces SET owner_id = (SELECT user_id FROM workspace_members \
               WHERE workspace_id = $1 AND role = 'owner' ORDER BY joined_at, user_id LIMIT 1) \
             WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM workspace_members \
               WHERE workspace_id = $1 AND user_id = workspaces.owner_id AND role = 'owner')")
            .bind(ws).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(MemberChange::Done)
    })
}

const INVITATION_COLS: &str = "id, workspace_id, email, role, invited_by, expires_at, created_at";

/// Records an invitation; `token_hash` is the SHA-256 of the secret in the accept link.
pub async fn create_invitation(
    db: &Db,
    ws: &str,
    email: &str,
    role: Role,
    token_hash: &str,
    invited_by: &str,
    ttl_ms: i64,
) -> Result<Invitation> {
    let now = now_ms();
    let sql = format!(
        "INSERT INTO invitations (id, workspace_id, email, role, token_hash, invited_by, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {INVITATION_COLS}"
    );
    with_pool!(db, p => Ok(sqlx::query_as(&sql)
        .bind(new_id()).bind(ws).bind(email).bind(role.as_str()).bind(token_hash).bind(invited_by).bind(now).bind(now + ttl_ms)
        .fetch_one(p).await?))
}

/// Deletes an invitation whose email could not be sent.
pub async fn delete_invitation(db: &Db, id: &str) -> Result<()> {
    with_pool!(db, p => { sqlx::query("DELETE FROM invitations WHERE id = $1").bind(id).execute(p).await?; });
    Ok(())
}

/// A workspace's pending invitations (neither accepted, revoked nor expired), by id, after
/// `cursor`.
pub async fn invitations(
    db: &Db,
    ws: &str,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<Invitation>> {
    let sql = format!(
        "SELECT {INVITATION_COLS} FROM invitations WHERE workspace_id = $1 AND accepted_at IS NULL \
         AND revoked_at IS NULL AND expires_at > $2 AND ($3 IS NULL OR id > $3) ORDER BY id LIMIT $4"
    );
    with_pool!(db, p => Ok(sqlx::query_as(&sql).bind(ws).bind(now_ms()).bind(cursor).bind(limit).fetch_all(p).await?))
}

/// Revokes a pending invitation of `ws`; false if there is none with that id.
pub async fn revoke_invitation(db: &Db, ws: &str, id: &str) -> Result<bool> {
    with_pool!(db, p => Ok(sqlx::query(
        "UPDATE invitations SET revoked_at = $3 WHERE id = $2 AND workspace_id = $1 \
         AND accepted_at IS NULL AND revoked_at IS NULL")
        .bind(ws).bind(id).bind(now_ms()).execute(p).await?.rows_affected() == 1))
}

/// Revokes the pending invitations `inviter` created in `ws` (they were removed or lost the
/// right to invite); returns how many.
pub async fn revoke_invitations_by(db: &Db, ws: &str, inviter: &str) -> Result<u64> {
    with_pool!(db, p => Ok(sqlx::query(
        "UPDATE invitations SET revoked_at = $3 WHERE workspace_id = $1 AND invited_by = $2 \
         AND accepted_at IS NULL AND revoked_at IS NULL")
        .bind(ws).bind(inviter).bind(now_ms()).execute(p).await?.rows_affected()))
}

/// What accepting an invitation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acceptance {
    /// The caller is a member of this workspace now (or already was).
    Joined(String),
    /// No pending invitation has this secret (unknown, used, revoked or expired).
    Unknown,
    /// The invitation is for another email address than the caller's.
    WrongEmail,
    /// The inviter no longer may invite: the invitation is revoked.
    InviterLost,
}

/// Accepts the invitation whose secret hashes to `token_hash` for `user`, whose email
/// addresses (verified) are `emails`: it must be addressed to one of them, and its inviter
/// must still be allowed to manage members. All in one transaction that takes the
/// workspace row first, like [`change_member`], so a concurrent removal of the inviter
/// either comes before (and the invitation fails) or after (and removes its invitations).
pub async fn accept_invitation(
    db: &Db,
    token_hash: &str,
    user: &str,
    emails: &[String],
) -> Result<Acceptance> {
    let now = now_ms();
    with_pool!(db, p => {
        let mut tx = p.begin().await?;
        let inv: Option<(String, String, String, String, String)> = sqlx::query_as(
            "SELECT id, workspace_id, email, role, invited_by FROM invitations WHERE token_hash = $1 \
             AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $2")
            .bind(token_hash).bind(now).fetch_optional(&mut *tx).await?;
        let Some((id, ws, email, role, inviter)) = inv else { return Ok(Acceptance::Unknown) };
        if !emails.iter().any(|e| e.trim().eq_ignore_ascii_case(email.trim())) {
            return Ok(Acceptance::WrongEmail);
        }
        sqlx::query("UPDATE workspaces SET updated_at = $2 WHERE id = $1").bind(&ws).bind(now).execute(&mut *tx).await?;
        let inviter_role: Option<(String,)> = sqlx::query_as(
            "SELECT role FROM workspace_members WHERE workspace_id = $1 AND user_id = $2")
            .bind(&ws).bind(&inviter).fetch_optional(&mut *tx).await?;
        let allowed = inviter_role
            .and_then(|(r,)| Role::parse(&r))
            .is_some_and(|r| r.allows(super::Action::ManageMembers));
        if !allowed {
            sqlx::query("UPDATE invitations SET revoked_at = $2 WHERE id = $1").bind(&id).bind(now).execute(&mut *tx).await?;
            tx.commit().await?;
            return Ok(Acceptance::InviterLost);
        }
        sqlx::query("UPDATE invitations SET accepted_at = $2 WHERE id = $1").bind(&id).bind(now).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO workspace_members (workspace_id, user_id, role, joined_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (workspace_id, user_id) DO NOTHING")
            .bind(&ws).bind(user).bind(&role).bind(now).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Acceptance::Joined(ws))
    })
}

/// Creates a workflow in `ws`.
pub async fn create_workflow(
    db: &Db,
    ws: &str,
    user: &str,
    name: &str,
    description: Option<&str>,
) -> Result<Workflow> {
    let now = now_ms();
    let sql = format!(
        "INSERT INTO workflows (id, workspace_id, created_by, name, description, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'draft', $6, $6) RETURNING {WORKFLOW_COLS}"
    );
    with_pool!(db, p => Ok(sqlx::query_as(&sql).bind(new_id()).bind(ws).bind(user).bind(name).bind(description).bind(now).fetch_one(p).await?))
}

/// A workflow by id.
pub async fn workflow(db: &Db, id: &str) -> Result<Option<Workflow>> {
    let sql = format!("SELECT {WORKFLOW_COLS} FROM workflows WHERE id = $1");
    with_pool!(db, p => Ok(sqlx::query_as(&sql).bind(id).fetch_optional(p).await?))
}

/// A workflow and `user`'s role in its workspace (`None` if not a member).
pub async fn workflow_with_role(
    db: &Db,
    id: &str,
    user: &str,
) -> Result<Option<(Workflow, Option<Role>)>> {
    let Some(wf) = workflow(db, id).await? else {
        return Ok(None);
    };
    let role = member_role(db, &wf.workspace_id, user).await?;
    Ok(Some((wf, role)))
}

/// A workspace's workflows, newest first, optionally with one status, after `cursor`.
pub async fn workflows(
    db: &Db,
    ws: &str,
    status: Option<&str>,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<Workflow>> {
    let sql = format!(
        "SELECT {WORKFLOW_COLS} FROM workflows WHERE workspace_id = $1 AND ($2 IS NULL OR status = $2) \
         AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
    );
    with_pool!(db, p => Ok(sqlx::query_as(&sql).bind(ws).bind(status).bind(cursor).bind(limit).fetch_all(p).await?))
}

/// Changes the given metadata fields of a workflow.
pub async fn update_workflow(
    db: &Db,
    id: &str,
    name: Option<&str>,
    description: Option<Option<&str>>,
    status: Option<&str>,
) -> Result<Option<Workflow>> {
    let sql = format!(
        "UPDATE workflows SET name = COALESCE($2, name), \
         description = CASE WHEN $3 THEN $4 ELSE description END, \
         status = COALESCE($5, status), updated_at = $6 WHERE id = $1 RETURNING {WORKFLOW_COLS}"
    );
    with_pool!(db, p => Ok(sqlx::query_as(&sql)
        .bind(id).bind(name).bind(description.is_some()).bind(description.flatten()).bind(status).bind(now_ms())
        .fetch_optional(p).await?))
}

/// Deletes a workflow's row (versions and comments go with it).
pub async fn delete_workflow(db: &Db, id: &str) -> Result<bool> {
    with_pool!(db, p => Ok(sqlx::query("DELETE FROM workflows WHERE id = $1").bind(id).execute(p).await?.rows_affected() > 0))
}

/// The limits a new version is checked against.
#[derive(Debug, Clone, Copy)]
pub struct VersionQuota {
    /// Bytes of version states one workspace may hold (`--max-workspace-stored-bytes`).
    pub workspace_bytes: i64,
    /// Versions one workflow may have (`--max-versions-per-workflow`).
    pub versions_per_workflow: i64,
}

/// The state of a workflow's latest version, the base a new version's delta is taken from.
pub async fn latest_version_state(
    db: &Db,
    workflow: &str,
) -> Result<Option<crate::versions::Base>> {
    with_pool!(db, p => {
        let row: Option<(String, i64, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT s.key, s.depth, s.state_vector FROM workflow_versions v \
             JOIN version_states s ON s.workflow_id = v.workflow_id AND s.key = v.state_key \
             WHERE v.workflow_id = $1 ORDER BY v.version DESC LIMIT 1")
            .bind(workflow).fetch_optional(p).await?;
        Ok(row.map(|(key, depth, state_vector)| crate::versions::Base { key, depth, state_vector }))
    })
}

/// Stores a new version (number = last + 1) and makes it the workflow's current version. Its
/// state is stored only if the workflow has no identical one; [`DbError::Quota`] when the
/// workflow has as many versions as it may or the new state would take its workspace past
/// its bytes.
pub async fn create_version(
    db: &Db,
    workflow: &str,
    user: &str,
    name: Option<&str>,
    message: Option<&str>,
    state: &crate::versions::Prepared,
    quota: VersionQuota,
) -> Result<VersionInfo> {
    let now = now_ms();
    with_pool!(db, p => {
        let mut tx = p.begin().await?;
        // Locks the workflow row: concurrent versions get consecutive numbers, and the
        // count below cannot be raced past.
        let (version, workspace): (i64, String) = sqlx::query_as(
            "UPDATE workflows SET version = version + 1, updated_at = $2 WHERE id = $1 RETURNING version, workspace_id")
            .bind(workflow).bind(now).fetch_one(&mut *tx).await?;
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM workflow_versions WHERE workflow_id = $1")
            .bind(workflow).fetch_one(&mut *tx).await?;
        if count >= quota.versions_per_workflow {
            return Err(DbError::Quota(format!(
                "this workflow has {count} versions, the most it may keep \
                 (--max-versions-per-workflow = {}); no version was saved",
                quota.versions_per_workflow
            )));
        }
        let known: Option<(i64,)> = sqlx::query_as("SELECT depth FROM version_states WHERE workflow_id = $1 AND key = $2")
            .bind(workflow).bind(&state.key).fetch_optional(&mut *tx).await?;
        if known.is_none() {
            // Locks the workspace row: saves in its other workflows wait, so two cannot both
            // fit under the limit the pair exceeds.
            sqlx::query("UPDATE workspaces SET updated_at = updated_at WHERE id = $1")
                .bind(&workspace).execute(&mut *tx).await?;
            let (used,): (i64,) = sqlx::query_as(
                "SELECT CAST(COALESCE(SUM(s.stored_bytes), 0) AS BIGINT) FROM version_states s \
                 JOIN workflows w ON w.id = s.workflow_id WHERE w.workspace_id = $1")
                .bind(&workspace).fetch_one(&mut *tx).await?;
            let adding = state.data.len() as i64;
            if used + adding > quota.workspace_bytes {
                return Err(DbError::Quota(format!(
                    "this version needs {adding} bytes and the workspace's versions already \
                     hold {used} of the {} they may (--max-workspace-stored-bytes); \
                     no version was saved",
                    quota.workspace_bytes
                )));
            }
            sqlx::query(
                "INSERT INTO version_states (workflow_id, key, base_key, depth, state_vector, data, stored_bytes, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (workflow_id, key) DO NOTHING")
                .bind(workflow).bind(&state.key).bind(state.base.as_deref()).bind(state.depth)
                .bind(&state.state_vector).bind(&state.data).bind(adding).bind(now)
                .execute(&mut *tx).await?;
        }
        let info: VersionInfo = sqlx::query_as(
            "INSERT INTO workflow_versions (id, workflow_id, version, name, message, state_key, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             RETURNING id, workflow_id, version, name, message, created_by, created_at")
            .bind(new_id()).bind(workflow).bind(version).bind(name).bind(message).bind(&state.key).bind(user).bind(now)
            .fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(info)
    })
}

/// A workflow's versions, newest first, before version `cursor`.
pub async fn versions(
    db: &Db,
    workflow: &str,
    cursor: Option<i64>,
    limit: i64,
) -> Result<Vec<VersionInfo>> {
    with_pool!(db, p => Ok(sqlx::query_as(
        "SELECT id, workflow_id, version, name, message, created_by, created_at FROM workflow_versions \
         WHERE workflow_id = $1 AND ($2 IS NULL OR version < $2) ORDER BY version DESC LIMIT $3")
        .bind(workflow).bind(cursor).bind(limit).fetch_all(p).await?))
}

/// A stored version state's chain, full state first, ready for
/// the server's `version_state::rebuild`.
#[derive(Debug)]
pub struct StateChain {
    /// The state's key.
    pub key: String,
    /// The full state, then each delta in the order they apply.
    pub parts: Vec<Vec<u8>>,
}

/// A version row with its state key: id, workflow, number, name, message, author, time, key.
type VersionRow = (
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
    String,
    i64,
    String,
);

/// One version with the chain of its stored state.
pub async fn version(
    db: &Db,
    workflow: &str,
    version: i64,
) -> Result<Option<(VersionInfo, StateChain)>> {
    with_pool!(db, p => {
        let row: Option<VersionRow> = sqlx::query_as(
            "SELECT id, workflow_id, version, name, message, created_by, created_at, state_key FROM workflow_versions WHERE workflow_id = $1 AND version = $2")
            .bind(workflow).bind(version).fetch_optional(p).await?;
        let Some((id, workflow_id, version, name, message, created_by, created_at, key)) = row else { return Ok(None) };
        let info = VersionInfo { id, workflow_id, version, name, message, created_by, created_at };
        let mut parts = Vec::new();
        let mut next = Some(key.clone());
        while let Some(k) = next {
            let (base, data): (Option<String>, Vec<u8>) = sqlx::query_as(
                "SELECT base_key, data FROM version_states WHERE workflow_id = $1 AND key = $2")
                .bind(workflow).bind(&k).fetch_one(p).await?;
            parts.push(data);
            // The chain is bounded when written; a longer one is corrupt, not a reason to loop.
            if parts.len() as i64 > crate::versions::MAX_CHAIN + 1 {
                return Err(DbError::Sqlx(sqlx::Error::Protocol(format!("version state chain of {key} is too long"))));
            }
            next = base;
        }
        parts.reverse();
        Ok(Some((info, StateChain { key, parts })))
    })
}

/// Records that the document was restored from version `version_id`.
pub async fn set_parent_version(db: &Db, workflow: &str, version_id: &str) -> Result<()> {
    with_pool!(db, p => {
        sqlx::query("UPDATE workflows SET parent_version_id = $2, updated_at = $3 WHERE id = $1")
            .bind(workflow).bind(version_id).bind(now_ms()).execute(p).await?;
    });
    Ok(())
}

const COMMENT_COLS: &str =
    "id, workflow_id, user_id, block_id, content, parent_id, resolved, created_at, updated_at";

/// Adds a comment (a reply when `parent` is set).
pub async fn create_comment(
    db: &Db,
    workflow: &str,
    user: &str,
    block: Option<&str>,
    parent: Option<&str>,
    content: &str,
) -> Result<Comment> {
    let now = now_ms();
    let sql = format!(
        "INSERT INTO comments (id, workflow_id, user_id, block_id, content, parent_id, resolved, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, FALSE, $7, $7) RETURNING {COMMENT_COLS}"
    );
    with_pool!(db, p => Ok(sqlx::query_as(&sql).bind(new_id()).bind(workflow).bind(user).bind(block).bind(content).bind(parent).bind(now).fetch_one(p).await?))
}

/// A comment by id.
pub async fn comment(db: &Db, id: &str) -> Result<Option<Comment>> {
    let sql = format!("SELECT {COMMENT_COLS} FROM comments WHERE id = $1");
    with_pool!(db, p => Ok(sqlx::query_as(&sql).bind(id).fetch_optional(p).await?))
}

/// A workflow's comments in creation order, optionally for one block, after `cursor`.
pub async fn comments(
    db: &Db,
    workflow: &str,
    block: Option<&str>,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<Comment>> {
    let sql = format!(
        "SELECT {COMMENT_COLS} FROM comments WHERE workflow_id = $1 AND ($2 IS NULL OR block_id = $2) \
         AND ($3 IS NULL OR id > $3) ORDER BY id LIMIT $4"
    );
    with_pool!(db, p => Ok(sqlx::query_as(&sql).bind(workflow).bind(block).bind(cursor).bind(limit).fetch_all(p).await?))
}

/// Changes a comment's text and/or resolved flag.
pub async fn update_comment(
    db: &Db,
    id: &str,
    content: Option<&str>,
    resolved: Option<bool>,
) -> Result<Option<Comment>> {
    let sql = format!(
        "UPDATE comments SET content = COALESCE($2, content), resolved = COALESCE($3, resolved), updated_at = $4 \
         WHERE id = $1 RETURNING {COMMENT_COLS}"
    );
    with_pool!(db, p => Ok(sqlx::query_as(&sql).bind(id).bind(content).bind(resolved).bind(now_ms()).fetch_optional(p).await?))
}

/// Deletes a comment and its replies.
pub async fn delete_comment(db: &Db, id: &str) -> Result<()> {
    with_pool!(db, p => { sqlx::query("DELETE FROM comments WHERE id = $1").bind(id).execute(p).await?; });
    Ok(())
}
