//! Invitation emails, sent through Resend's HTTP API.

use std::time::Duration;

use serde_json::json;

/// Why an email was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// No Resend API key is configured.
    #[error("email is not configured on this server (RESEND_API_KEY); add existing users instead")]
    NotConfigured,
    /// Resend could not be reached.
    #[error("the email service could not be reached")]
    Unreachable(#[source] reqwest::Error),
    /// Resend refused the message.
    #[error("the email service refused the message ({status}): {message}")]
    Refused {
        /// HTTP status from Resend.
        status: u16,
        /// Resend's error message.
        message: String,
    },
}

/// Sends email through Resend; cheap to clone.
#[derive(Clone)]
pub struct Mailer {
    http: reqwest::Client,
    api_key: Option<String>,
    base_url: String,
    from: String,
}

impl Mailer {
    /// A mailer for `base_url` (Resend's API, or a test double) with `api_key`.
    pub fn new(api_key: Option<String>, base_url: &str, from: &str) -> Mailer {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("static HTTP client configuration");
        Mailer {
            http,
            api_key,
            base_url: base_url.trim_end_matches('/').to_string(),
            from: from.to_string(),
        }
    }

    /// Sends an invitation to join `workspace` with an accept `link`. `id` (the invitation's)
    /// is the idempotency key, so a retried request never sends two emails.
    pub async fn send_invitation(
        &self,
        id: &str,
        to: &str,
        workspace: &str,
        inviter: Option<&str>,
        link: &str,
    ) -> Result<(), MailError> {
        if self.api_key.is_none() {
            return Err(MailError::NotConfigured);
        }
        let who = inviter.unwrap_or("A teammate");
        let subject = format!("{who} invited you to {workspace} on Resonant");
        let text = format!(
            "{who} invited you to the workspace \"{workspace}\" on Resonant.\n\nAccept: {link}\n\nThe link is valid for 7 days."
        );
        let html = format!(
            "<p>{} invited you to the workspace <strong>{}</strong> on Resonant.</p><p><a href=\"{}\">Accept the invitation</a></p><p>The link is valid for 7 days.</p>",
            escape(who),
            escape(workspace),
            escape(link)
        );
        self.send(&format!("invitation-{id}"), to, &subject, &text, &html)
            .await
    }

    /// Asks `to` to approve or reject a waiting human block; `key` makes a retried send
    /// (after a restart) one email.
    pub async fn send_approval_request(
        &self,
        key: &str,
        to: &str,
        workflow: &str,
        message: &str,
        link: &str,
    ) -> Result<(), MailError> {
        let subject = format!("Approval needed: {workflow}");
        let text = format!(
            "A run of \"{workflow}\" on Resonant is waiting for your decision.\n\n{message}\n\nDecide: {link}"
        );
        let html = format!(
            "<p>A run of <strong>{}</strong> on Resonant is waiting for your decision.</p><p>{}</p><p><a href=\"{}\">Approve or reject</a></p>",
            escape(workflow),
            escape(message),
            escape(link)
        );
        self.send(key, to, &subject, &text, &html).await
    }

    /// Sends one email through Resend with an idempotency key.
    async fn send(
        &self,
        key: &str,
        to: &str,
        subject: &str,
        text: &str,
        html: &str,
    ) -> Result<(), MailError> {
        let api_key = self.api_key.as_deref().ok_or(MailError::NotConfigured)?;
        let response = self
            .http
            .post(format!("{}/emails", self.base_url))
            .bearer_auth(api_key)
            .header("Idempotency-Key", key)
            .json(&json!({ "from": self.from, "to": [to], "subject": subject, "text": text, "html": html }))
            .send()
            .await
            .map_err(MailError::Unreachable)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let message = body
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("no message")
            .chars()
            .take(200)
            .collect();
        Err(MailError::Refused {
            status: status.as_u16(),
            message,
        })
    }

    /// Whether a Resend key is configured.
    pub fn is_configured(&self) -> bool {
        self.api_key.is_some()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
