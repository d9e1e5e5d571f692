//! A mock of Resend's `POST /emails`, recording what it is sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

/// A request the mock received: its Authorization header and JSON body.
pub type SentEmail = (Option<String>, Value);

/// The mock's state.
#[derive(Clone, Default)]
pub struct MockResend {
    /// What it received.
    pub requests: Arc<Mutex<Vec<SentEmail>>>,
    /// Answer every request with this status instead of 200.
    pub fail: Arc<Mutex<Option<u16>>>,
    /// Signalled on every request.
    pub received: Arc<tokio::sync::Notify>,
}

impl MockResend {
    /// Waits until at least `n` requests arrived; panics after the test wait.
    pub async fn wait_for(&self, n: usize) -> Vec<SentEmail> {
        let wait = async {
            loop {
                let notified = self.received.notified();
                let sent = self.requests.lock().unwrap().clone();
                if sent.len() >= n {
                    return sent;
                }
                notified.await;
            }
        };
        tokio::time::timeout(super::WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("the mock Resend did not get {n} requests"))
    }
}

/// Starts the mock on loopback.
pub async fn mock_resend() -> (SocketAddr, MockResend) {
    use axum::extract::State;
    use axum::http::HeaderMap;
    let mock = MockResend::default();
    let app = axum::Router::new()
        .route(
            "/emails",
            axum::routing::post(|State(m): State<MockResend>, headers: HeaderMap, body: axum::Json<Value>| async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
                m.requests.lock().unwrap().push((auth, body.0));
                m.received.notify_waiters();
                match *m.fail.lock().unwrap() {
                    Some(code) => (
                        axum::http::StatusCode::from_u16(code).unwrap(),
                        axum::Json(json!({ "statusCode": code, "message": "domain not verified", "name": "validation_error" })),
                    ),
                    None => (axum::http::StatusCode::OK, axum::Json(json!({ "id": "email_123" }))),
                }
            }),
        )
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, mock)
}
