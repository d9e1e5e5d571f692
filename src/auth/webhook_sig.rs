//! Signature checks for incoming webhooks: Clerk (which sends through Svix) and Stripe.
//!
//! Both schemes are HMAC-SHA256 over a timestamp and the raw request body, so the checks here
//! take the body exactly as received (before any JSON parsing) and the current time as an
//! argument, which keeps them pure and testable. Signatures are compared in constant time
//! (`Mac::verify_slice`) so that response timing does not reveal how much of a forged
//! signature was right. The timestamp window limits replays of a captured request.
//!
//! No function here panics on any header or body, however malformed; the `sign_*` helpers
//! produce valid headers for tests and tools.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far a Svix timestamp may be from now, either way, in seconds (Svix's own tolerance).
pub const SVIX_TOLERANCE_SECS: i64 = 5 * 60;
/// Stripe's default tolerance in seconds, for callers of [`verify_stripe`].
pub const STRIPE_DEFAULT_TOLERANCE_SECS: i64 = 5 * 60;

/// The prefix of Svix signing secrets; the rest is the base64 HMAC key.
const SVIX_SECRET_PREFIX: &str = "whsec_";

/// Why a webhook request was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// A required header was absent or empty; carries the header's name.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A header was present but could not be parsed; says which.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The signed timestamp is outside the tolerance (too old, or too far in the future).
    #[error("webhook timestamp is outside the allowed window")]
    Stale,
    /// No signature for a supported scheme matches the body.
    #[error("no webhook signature matches")]
    NoMatch,
    /// The configured signing secret is unusable (a configuration error, not a bad request).
    #[error("webhook signing secret is invalid")]
    BadSecret,
}

/// Decodes a Svix `whsec_<base64>` secret into the HMAC key.
fn svix_key(secret: &str) -> Result<Vec<u8>, SignatureError> {
    let encoded = secret
        .strip_prefix(SVIX_SECRET_PREFIX)
        .ok_or(SignatureError::BadSecret)?;
    let key = STANDARD
        .decode(encoded)
        .or_else(|_| STANDARD_NO_PAD.decode(encoded))
        .map_err(|_| SignatureError::BadSecret)?;
    // An empty key would make every signature computable by anyone.
    if key.is_empty() {
        return Err(SignatureError::BadSecret);
    }
    Ok(key)
}

/// An HMAC-SHA256 instance keyed with `key` and fed `parts` in order.
fn mac_over(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC takes keys of any length (long ones are hashed), so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac
}

/// Whether `timestamp` is within `tolerance` seconds of `now`, in either direction.
fn fresh(timestamp: i64, now: i64, tolerance: i64) -> bool {
    // abs_diff cannot overflow, whatever a sender puts in the header.
    timestamp.abs_diff(now) <= tolerance.max(0).unsigned_abs()
}

/// Checks a Svix (Clerk) webhook: the `svix-id`, `svix-timestamp` and `svix-signature` headers.
///
/// `secret` is the endpoint's `whsec_…` signing secret. Pass an absent header as `""`. The
/// signed content is `{svix-id}.{svix-timestamp}.{body}` with the headers exactly as received.
/// `signatures` is a space-separated list of `version,base64` entries (several appear while a
/// secret is being rotated); one matching `v1` entry is enough and other versions are ignored.
/// The timestamp must be within five minutes of `now_unix` either way.
pub fn verify_svix(
    secret: &str,
    msg_id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now_unix: i64,
) -> Result<(), SignatureError> {
    // The secret first: a misconfigured server should say so for every request, not only for
    // the ones that happen to be well formed.
    let key = svix_key(secret)?;
    if msg_id.is_empty() {
        return Err(SignatureError::MissingHeader("svix-id"));
    }
    if timestamp.is_empty() {
        return Err(SignatureError::MissingHeader("svix-timestamp"));
    }
    if signatures.trim().is_empty() {
        return Err(SignatureError::MissingHeader("svix-signature"));
    }
    let sent_at: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::Malformed("svix-timestamp"))?;

    // Parse before checking the time, so a garbled header is reported as such even when old.
    let mut entries = Vec::new();
    for entry in signatures.split_ascii_whitespace() {
        match entry.split_once(',') {
            Some((version, sig)) if !version.is_empty() && !sig.is_empty() => {
                entries.push((version, sig))
            }
            _ => return Err(SignatureError::Malformed("svix-signature")),
        }
    }
    if !fresh(sent_at, now_unix, SVIX_TOLERANCE_SECS) {
        return Err(SignatureError::Stale);
    }

    let mac = mac_over(
        &key,
        &[msg_id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    );
    let matched = entries
        .iter()
        .filter(|(version, _)| *version == "v1")
        // An undecodable entry is just one that does not match: the others may still.
        .filter_map(|(_, sig)| STANDARD.decode(sig).ok())
        .any(|sig| mac.clone().verify_slice(&sig).is_ok());
    if matched {
        Ok(())
    } else {
        Err(SignatureError::NoMatch)
    }
}

/// Checks a Stripe webhook's `Stripe-Signature` header (`t=…,v1=…[,v1=…][,v0=…]`).
///
/// `secret` is the endpoint's signing secret, used verbatim (including `whsec_`) as the HMAC
/// key. The signed content is `{t}.{body}`; any matching `v1` signature is enough and other
/// schemes are ignored. `t` must be within `tolerance_secs` of `now_unix` in either direction
/// (Stripe's libraries only bound the past; a far-future stamp is as suspect as an old one).
/// A negative tolerance counts as zero; there is deliberately no value that disables the check.
pub fn verify_stripe(
    secret: &str,
    header: &str,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    if secret.is_empty() {
        return Err(SignatureError::BadSecret);
    }
    if header.trim().is_empty() {
        return Err(SignatureError::MissingHeader("Stripe-Signature"));
    }
    let mut timestamp: Option<&str> = None;
    let mut v1 = Vec::new();
    for item in header.split(',') {
        let (key, value) = item
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed("Stripe-Signature"))?;
        match key {
            // Two timestamps would make it ambiguous which one was signed.
            "t" if timestamp.is_some() => {
                return Err(SignatureError::Malformed("Stripe-Signature timestamp"))
            }
            "t" => timestamp = Some(value),
            "v1" => v1.push(value),
            // v0 (test-mode legacy) and anything Stripe adds later are not ours to check.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("Stripe-Signature timestamp"))?;
    let sent_at: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::Malformed("Stripe-Signature timestamp"))?;
    if !fresh(sent_at, now_unix, tolerance_secs) {
        return Err(SignatureError::Stale);
    }

    let mac = mac_over(secret.as_bytes(), &[timestamp.as_bytes(), b".", body]);
    let matched = v1
        .iter()
        .filter_map(|sig| hex::decode(sig).ok())
        .any(|sig| mac.clone().verify_slice(&sig).is_ok());
    if matched {
        Ok(())
    } else {
        Err(SignatureError::NoMatch)
    }
}

/// Whether a presented bearer secret equals the stored one, compared in constant time (as
/// MACs under a fixed key, so neither the length nor the first differing byte shows in the
/// timing).
pub fn same_secret(given: &str, stored: &str) -> bool {
    const KEY: &[u8] = b"resonant bearer comparison";
    let tag = mac_over(KEY, &[stored.as_bytes()]).finalize().into_bytes();
    mac_over(KEY, &[given.as_bytes()])
        .verify_slice(&tag)
        .is_ok()
}

/// Signs like Svix does and returns the `svix-signature` value `v1,<base64>` (tests and tools).
///
/// # Panics
///
/// If `secret` is not a valid `whsec_<base64>` secret: this is a helper for tests, where a bad
/// secret is a bug in the test.
pub fn sign_svix(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = svix_key(secret).expect("sign_svix needs a whsec_<base64> secret");
    let timestamp = timestamp.to_string();
    let mac = mac_over(
        &key,
        &[msg_id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    );
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Signs like Stripe does and returns the whole `Stripe-Signature` value (tests and tools).
pub fn sign_stripe(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    let mac = mac_over(secret.as_bytes(), &[timestamp.as_bytes(), b".", body]);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The example from Svix's "verifying webhooks manually" documentation.
    const SVIX_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SVIX_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SVIX_TS: i64 = 1614265330;
    const SVIX_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SVIX_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    const STRIPE_SECRET: &str = "whsec_test_secret";
    const STRIPE_TS: i64 = 1492774577;
    const STRIPE_BODY: &[u8] = br#"{"id":"evt_test","object":"event"}"#;
    // Computed independently when this test was written:
    //   printf '%s' '1492774577.{"id":"evt_test","object":"event"}' \
    //     | openssl dgst -sha256 -hmac 'whsec_test_secret'
    const STRIPE_SIG: &str = "691252e266ce41cb94d709c84e9580d4172b117a510bbc81723f657d2cd5d215";

    fn svix(timestamp: &str, signatures: &str, body: &[u8]) -> Result<(), SignatureError> {
        verify_svix(SVIX_SECRET, SVIX_ID, timestamp, signatures, body, SVIX_TS)
    }

    fn stripe(header: &str, body: &[u8], now: i64) -> Result<(), SignatureError> {
        verify_stripe(STRIPE_SECRET, header, body, now, 300)
    }

    #[test]
    fn svix_known_answer() {
        assert_eq!(
            sign_svix(SVIX_SECRET, SVIX_ID, SVIX_TS, SVIX_BODY),
            SVIX_SIG
        );
        assert_eq!(svix("1614265330", SVIX_SIG, SVIX_BODY), Ok(()));
    }

    #[test]
    fn svix_tampering_is_rejected() {
        assert_eq!(
            svix("1614265330", SVIX_SIG, br#"{"test": 2432232315}"#),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            svix("1614265331", SVIX_SIG, SVIX_BODY),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify_svix(
                SVIX_SECRET,
                "msg_other",
                "1614265330",
                SVIX_SIG,
                SVIX_BODY,
                SVIX_TS
            ),
            Err(SignatureError::NoMatch)
        );
        let other_secret = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert_eq!(
            verify_svix(
                other_secret,
                SVIX_ID,
                "1614265330",
                SVIX_SIG,
                SVIX_BODY,
                SVIX_TS
            ),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn svix_window() {
        let check =
            |now: i64| verify_svix(SVIX_SECRET, SVIX_ID, "1614265330", SVIX_SIG, SVIX_BODY, now);
        assert_eq!(check(SVIX_TS + 300), Ok(()));
        assert_eq!(check(SVIX_TS - 300), Ok(()));
        assert_eq!(check(SVIX_TS + 360), Err(SignatureError::Stale));
        assert_eq!(check(SVIX_TS - 360), Err(SignatureError::Stale));
        assert_eq!(check(i64::MIN), Err(SignatureError::Stale));
        assert_eq!(check(i64::MAX), Err(SignatureError::Stale));
    }

    #[test]
    fn svix_several_signatures() {
        let other = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let header = format!("v2,abc {other} v1,!!notbase64!! {SVIX_SIG}");
        assert_eq!(svix("1614265330", &header, SVIX_BODY), Ok(()));
        assert_eq!(
            svix("1614265330", &format!("{SVIX_SIG}  {other}"), SVIX_BODY),
            Ok(())
        );
        assert_eq!(
            svix("1614265330", other, SVIX_BODY),
            Err(SignatureError::NoMatch)
        );
        // The right bytes under another version label do not count.
        let v0 = SVIX_SIG.replacen("v1,", "v0,", 1);
        assert_eq!(
            svix("1614265330", &v0, SVIX_BODY),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn svix_missing_and_garbled_headers() {
        assert_eq!(
            verify_svix(SVIX_SECRET, "", "1614265330", SVIX_SIG, SVIX_BODY, SVIX_TS),
            Err(SignatureError::MissingHeader("svix-id"))
        );
        assert_eq!(
            svix("", SVIX_SIG, SVIX_BODY),
            Err(SignatureError::MissingHeader("svix-timestamp"))
        );
        assert_eq!(
            svix("1614265330", "  ", SVIX_BODY),
            Err(SignatureError::MissingHeader("svix-signature"))
        );
        for ts in [
            "soon",
            "1614265330.0",
            " 1614265330",
            "99999999999999999999",
        ] {
            assert_eq!(
                svix(ts, SVIX_SIG, SVIX_BODY),
                Err(SignatureError::Malformed("svix-timestamp")),
                "{ts:?}"
            );
        }
        for sigs in [
            "garbage",
            "v1,",
            ",abc",
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ] {
            assert_eq!(
                svix("1614265330", sigs, SVIX_BODY),
                Err(SignatureError::Malformed("svix-signature")),
                "{sigs:?}"
            );
        }
    }

    #[test]
    fn svix_bad_secret() {
        for secret in [
            "",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_",
            "whsec_not base64!",
            "sk_live_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ] {
            assert_eq!(
                verify_svix(secret, SVIX_ID, "1614265330", SVIX_SIG, SVIX_BODY, SVIX_TS),
                Err(SignatureError::BadSecret),
                "{secret:?}"
            );
        }
    }

    #[test]
    fn stripe_known_answer() {
        let header = format!("t={STRIPE_TS},v1={STRIPE_SIG}");
        assert_eq!(sign_stripe(STRIPE_SECRET, STRIPE_TS, STRIPE_BODY), header);
        assert_eq!(stripe(&header, STRIPE_BODY, STRIPE_TS), Ok(()));
        // Upper-case hex is the same signature.
        let upper = format!("t={STRIPE_TS},v1={}", STRIPE_SIG.to_uppercase());
        assert_eq!(stripe(&upper, STRIPE_BODY, STRIPE_TS), Ok(()));
    }

    #[test]
    fn stripe_tampering_is_rejected() {
        let header = sign_stripe(STRIPE_SECRET, STRIPE_TS, STRIPE_BODY);
        assert_eq!(
            stripe(&header, br#"{"id":"evt_test","object":"evenT"}"#, STRIPE_TS),
            Err(SignatureError::NoMatch)
        );
        let moved = format!("t={},v1={STRIPE_SIG}", STRIPE_TS + 1);
        assert_eq!(
            stripe(&moved, STRIPE_BODY, STRIPE_TS),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify_stripe("whsec_other", &header, STRIPE_BODY, STRIPE_TS, 300),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn stripe_window() {
        let header = sign_stripe(STRIPE_SECRET, STRIPE_TS, STRIPE_BODY);
        assert_eq!(stripe(&header, STRIPE_BODY, STRIPE_TS + 300), Ok(()));
        assert_eq!(stripe(&header, STRIPE_BODY, STRIPE_TS - 300), Ok(()));
        assert_eq!(
            stripe(&header, STRIPE_BODY, STRIPE_TS + 360),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            stripe(&header, STRIPE_BODY, STRIPE_TS - 360),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_stripe(STRIPE_SECRET, &header, STRIPE_BODY, STRIPE_TS + 1, -5),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_stripe(STRIPE_SECRET, &header, STRIPE_BODY, 0, i64::MAX),
            Ok(())
        );
    }

    #[test]
    fn stripe_several_signatures() {
        let wrong = "5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd";
        let header = format!("t={STRIPE_TS},v1={wrong},v1=nothex,v1={STRIPE_SIG},v0={wrong}");
        assert_eq!(stripe(&header, STRIPE_BODY, STRIPE_TS), Ok(()));
        let spaced = format!("t={STRIPE_TS}, v1={wrong}, v1={STRIPE_SIG}");
        assert_eq!(stripe(&spaced, STRIPE_BODY, STRIPE_TS), Ok(()));
        // The right signature under the v0 scheme does not count.
        let v0_only = format!("t={STRIPE_TS},v0={STRIPE_SIG}");
        assert_eq!(
            stripe(&v0_only, STRIPE_BODY, STRIPE_TS),
            Err(SignatureError::NoMatch)
        );
        let truncated = format!("t={STRIPE_TS},v1={}", &STRIPE_SIG[..32]);
        assert_eq!(
            stripe(&truncated, STRIPE_BODY, STRIPE_TS),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn stripe_missing_and_garbled_headers() {
        assert_eq!(
            stripe("", STRIPE_BODY, STRIPE_TS),
            Err(SignatureError::MissingHeader("Stripe-Signature"))
        );
        assert_eq!(
            stripe(&format!("v1={STRIPE_SIG}"), STRIPE_BODY, STRIPE_TS),
            Err(SignatureError::Malformed("Stripe-Signature timestamp"))
        );
        for t in ["", "abc", "1.5", "99999999999999999999"] {
            assert_eq!(
                stripe(&format!("t={t},v1={STRIPE_SIG}"), STRIPE_BODY, STRIPE_TS),
                Err(SignatureError::Malformed("Stripe-Signature timestamp")),
                "{t:?}"
            );
        }
        let twice = format!("t={STRIPE_TS},t={STRIPE_TS},v1={STRIPE_SIG}");
        assert_eq!(
            stripe(&twice, STRIPE_BODY, STRIPE_TS),
            Err(SignatureError::Malformed("Stripe-Signature timestamp"))
        );
        assert_eq!(
            stripe(
                &format!("t={STRIPE_TS},{STRIPE_SIG}"),
                STRIPE_BODY,
                STRIPE_TS
            ),
            Err(SignatureError::Malformed("Stripe-Signature"))
        );
        assert_eq!(
            verify_stripe("", "t=1,v1=00", STRIPE_BODY, 1, 300),
            Err(SignatureError::BadSecret)
        );
    }

    #[test]
    fn sign_helpers_round_trip() {
        let (now, body) = (1_700_000_000, b"{\"type\":\"user.created\"}".as_slice());
        let sig = sign_svix(SVIX_SECRET, "msg_1", now, body);
        assert_eq!(
            verify_svix(SVIX_SECRET, "msg_1", &now.to_string(), &sig, body, now),
            Ok(())
        );
        let header = sign_stripe(STRIPE_SECRET, now, body);
        assert_eq!(
            verify_stripe(STRIPE_SECRET, &header, body, now, 300),
            Ok(())
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn svix_never_panics(
            secret in prop_oneof![Just(SVIX_SECRET.to_string()), ".{0,40}"],
            id in ".{0,20}",
            ts in prop_oneof!["-?[0-9]{1,20}", ".{0,20}"],
            sigs in prop_oneof!["(v[0-9],[A-Za-z0-9+/=]{0,50} ?){0,4}", ".{0,120}"],
            body in prop::collection::vec(any::<u8>(), 0..64),
            now in any::<i64>(),
        ) {
            prop_assert!(verify_svix(&secret, &id, &ts, &sigs, &body, now).is_err());
        }

        #[test]
        fn stripe_never_panics(
            header in prop_oneof![
                "(t=-?[0-9]{1,20}|v[01]=[0-9a-f]{0,70}|[a-z]{0,3}=?.{0,8})(,(t=-?[0-9]{1,20}|v[01]=[0-9a-f]{0,70}|.{0,10})){0,4}",
                ".{0,120}",
            ],
            body in prop::collection::vec(any::<u8>(), 0..64),
            now in any::<i64>(),
            tolerance in any::<i64>(),
        ) {
            prop_assert!(verify_stripe(STRIPE_SECRET, &header, &body, now, tolerance).is_err());
        }
    }
}
