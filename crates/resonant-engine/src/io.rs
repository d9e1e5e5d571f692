//! The outside world as the engine reaches it: the AI router, the workspace's own provider
//! keys, the guarded client for webhooks, and email.

use std::sync::Arc;

use super::ai::{ProviderKey, Router, RouterConfig};
use super::http::WebhookClient;
use crate::crypto::KeyCipher;
use crate::db::Db;
use crate::email::Mailer;

/// Provider keys usable by one execution (the workspace's own, decrypted, as the database
/// gives them: the router takes them as they are).
pub type Keys = Vec<ProviderKey>;

/// The outside world, as the engine reaches it.
pub struct Io {
    /// The AI router (with the server's own keys).
    pub router: Arc<Router>,
    /// Decrypts workspaces' provider keys (`None`: no BYOK keys are stored).
    pub cipher: Option<KeyCipher>,
    /// Webhook blocks' HTTP client (SSRF-guarded).
    pub webhooks: WebhookClient,
    /// Approval emails (when Resend is configured).
    pub mailer: Option<Mailer>,
    /// Base URL for links in emails.
    pub public_url: String,
}

impl Default for Io {
    fn default() -> Self {
        Io {
            router: Arc::new(Router::new(RouterConfig::default())),
            cipher: None,
            webhooks: WebhookClient::new(Default::default()),
            mailer: None,
            public_url: "http://127.0.0.1:1234".into(),
        }
    }
}

impl Io {
    /// Loads a workspace's usable provider keys, lowest priority number first. A key that
    /// does not decrypt is left out (and logged), never used.
    pub async fn keys(&self, db: &Db, workspace: &str) -> Keys {
        let Some(cipher) = &self.cipher else {
            return Vec::new();
        };
        match crate::db::providers::provider_keys(db, cipher, workspace).await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::error!(workspace, error = %e, "reading provider keys failed");
                Vec::new()
            }
        }
    }
}
