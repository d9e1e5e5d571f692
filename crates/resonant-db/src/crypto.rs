//! Encryption of the provider API keys that users bring (BYOK).
//!
//! Keys are sealed with AES-256-GCM under one 32-byte server key (`--encryption-key` /
//! `RESONANT_ENCRYPTION_KEY`), with a fresh random 96-bit nonce per value and the id of the
//! row that holds the value as associated data. The AAD binds a ciphertext to its row: a
//! stored value copied into another user's row does not decrypt there, so a database writer
//! cannot move keys between accounts without the server noticing.
//!
//! The stored form is `v1:` followed by standard base64 of `nonce || ciphertext || tag`. The
//! version prefix lets a later format (another cipher, key rotation with a key id) sit beside
//! old rows and be told apart without guessing.
//!
//! Plaintext keys are never handed back to clients; [`last_four`] is what a UI may show.

use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;

/// Length of the server key in bytes (AES-256).
const KEY_LEN: usize = 32;
/// Length of the GCM nonce in bytes (the 96 bits GCM is specified for).
const NONCE_LEN: usize = 12;
/// Length of the GCM authentication tag in bytes.
const TAG_LEN: usize = 16;
/// Prefix of the current stored format.
const V1_PREFIX: &str = "v1:";
/// Secrets shorter than this get no hint from [`last_four`] (see there).
const MIN_LEN_FOR_HINT: usize = 8;

/// Why a key could not be configured or a stored value could not be decrypted.
///
/// The variants carry no key material and no plaintext, so they are safe to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The configured server key is not 32 bytes in one of the accepted encodings.
    #[error("encryption key must be 32 bytes, given as 64 hex characters or base64")]
    BadKey,
    /// The stored value is not in a format this version understands.
    #[error("stored secret is malformed: {0}")]
    Malformed(&'static str),
    /// Authentication failed: wrong server key, wrong row id, or the value was altered.
    #[error("stored secret could not be decrypted (wrong key, wrong row, or tampered)")]
    Decrypt,
}

/// The server's AES-256-GCM key for provider API keys; cheap to clone.
#[derive(Clone)]
pub struct KeyCipher {
    cipher: Aes256Gcm,
}

impl fmt::Debug for KeyCipher {
    // Written by hand so that the key can never end up in a log line or a panic message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCipher")
            .field("key", &"<redacted>")
            .finish()
    }
}

impl KeyCipher {
    /// Parses the configured key: 64 hex characters, or standard or URL-safe base64 of 32 bytes.
    ///
    /// Surrounding whitespace is ignored, since values read from files or secret stores often
    /// end in a newline. Anything that does not decode to exactly 32 bytes is refused rather
    /// than padded or hashed, so that a truncated key fails loudly at startup.
    pub fn from_config(value: &str) -> Result<KeyCipher, CryptoError> {
        let value = value.trim();
        let bytes = if value.len() == 2 * KEY_LEN && value.bytes().all(|b| b.is_ascii_hexdigit()) {
            // 64 characters of base64 would be 48 bytes, so hex is never ambiguous here.
            hex::decode(value).map_err(|_| CryptoError::BadKey)?
        } else {
            [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
                .iter()
                .find_map(|engine| engine.decode(value).ok())
                .ok_or(CryptoError::BadKey)?
        };
        if bytes.len() != KEY_LEN {
            return Err(CryptoError::BadKey);
        }
        Ok(KeyCipher::from_bytes(&bytes))
    }

    /// Makes a random key (for tests and development) and returns it with its base64 form.
    pub fn generate() -> (KeyCipher, String) {
        let key = Aes256Gcm::generate_key(OsRng);
        let encoded = STANDARD.encode(key);
        (KeyCipher::from_bytes(&key), encoded)
    }

    fn from_bytes(bytes: &[u8]) -> KeyCipher {
        KeyCipher {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(bytes)),
        }
    }

    /// Encrypts `plaintext` for the row `row_id`, returning the `v1:` stored form.
    ///
    /// Each call draws a new random nonce, so encrypting the same value twice gives different
    /// outputs. With random nonces one key is good for about 2^32 encryptions, far more than
    /// the number of provider keys a deployment will ever store.
    pub fn encrypt(&self, row_id: &str, plaintext: &str) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: row_id.as_bytes(),
        };
        let sealed = self
            .cipher
            .encrypt(&nonce, payload)
            // Only fails for inputs beyond GCM's 64 GiB limit, which no API key approaches.
            .expect("AES-GCM encryption of an in-memory string cannot fail");
        let mut raw = Vec::with_capacity(NONCE_LEN + sealed.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&sealed);
        format!("{V1_PREFIX}{}", STANDARD.encode(raw))
    }

    /// Decrypts a value made by [`KeyCipher::encrypt`] for the same row with the same key.
    ///
    /// Every failure (bad format, wrong key, wrong row, any altered byte) is an error; the
    /// function does not panic on any input.
    pub fn decrypt(&self, row_id: &str, stored: &str) -> Result<String, CryptoError> {
        let encoded = stored
            .strip_prefix(V1_PREFIX)
            .ok_or(CryptoError::Malformed("unknown version prefix"))?;
        let raw = STANDARD
            .decode(encoded)
            .map_err(|_| CryptoError::Malformed("not base64"))?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Malformed("too short"));
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let payload = Payload {
            msg: sealed,
            aad: row_id.as_bytes(),
        };
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| CryptoError::Decrypt)?;
        // Authenticated bytes that are not UTF-8 can only come from our own bug; still no panic.
        String::from_utf8(plain).map_err(|_| CryptoError::Malformed("plaintext is not UTF-8"))
    }
}

/// The last four characters of `secret`, or `""` when it is shorter than eight characters.
///
/// This is the only part of a provider key that is ever shown back. Counting is in Unicode
/// scalar values, so a multi-byte character is never cut. Secrets under eight characters get
/// an empty hint rather than a partial one: four characters of a five-character secret give
/// most of it away, and at eight at least as much stays hidden as is shown. Real provider
/// keys are tens of characters long, so in practice every key gets its hint.
pub fn last_four(secret: &str) -> String {
    let count = secret.chars().count();
    if count < MIN_LEN_FOR_HINT {
        return String::new();
    }
    secret.chars().skip(count - 4).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEX_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn cipher() -> KeyCipher {
        KeyCipher::from_config(HEX_KEY).unwrap()
    }

    #[test]
    fn round_trip() {
        let c = cipher();
        for secret in ["sk-proj-abcdef0123456789", "", "ключ-🔑-secret"] {
            let stored = c.encrypt("row-1", secret);
            assert!(stored.starts_with("v1:"));
            assert!(!stored.contains(secret) || secret.is_empty());
            assert_eq!(c.decrypt("row-1", &stored).unwrap(), secret);
        }
    }

    #[test]
    fn nonce_is_random() {
        let c = cipher();
        let a = c.encrypt("row-1", "sk-same-value");
        let b = c.encrypt("row-1", "sk-same-value");
        assert_ne!(a, b);
        let nonce = |s: &str| STANDARD.decode(&s[3..]).unwrap()[..NONCE_LEN].to_vec();
        assert_ne!(nonce(&a), nonce(&b));
    }

    #[test]
    fn other_row_id_fails() {
        let c = cipher();
        let stored = c.encrypt("row-1", "sk-secret");
        assert_eq!(c.decrypt("row-2", &stored), Err(CryptoError::Decrypt));
        assert_eq!(c.decrypt("", &stored), Err(CryptoError::Decrypt));
    }

    #[test]
    fn other_key_fails() {
        let stored = cipher().encrypt("row-1", "sk-secret");
        let (other, _) = KeyCipher::generate();
        assert_eq!(other.decrypt("row-1", &stored), Err(CryptoError::Decrypt));
    }

    #[test]
    fn flipping_any_byte_fails() {
        let c = cipher();
        let stored = c.encrypt("row-1", "sk-secret");
        let raw = STANDARD.decode(&stored[3..]).unwrap();
        for i in 0..raw.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = raw.clone();
                bad[i] ^= bit;
                let bad = format!("v1:{}", STANDARD.encode(&bad));
                assert_eq!(
                    c.decrypt("row-1", &bad),
                    Err(CryptoError::Decrypt),
                    "byte {i}"
                );
            }
        }
    }

    #[test]
    fn truncated_and_garbage_are_errors() {
        let c = cipher();
        let stored = c.encrypt("row-1", "sk-secret");
        for len in 0..stored.len() {
            assert!(c.decrypt("row-1", &stored[..len]).is_err(), "prefix {len}");
        }
        assert_eq!(
            c.decrypt("row-1", "sk-plaintext"),
            Err(CryptoError::Malformed("unknown version prefix"))
        );
        assert_eq!(
            c.decrypt("row-1", "v2:AAAA"),
            Err(CryptoError::Malformed("unknown version prefix"))
        );
        assert_eq!(
            c.decrypt("row-1", "v1:***"),
            Err(CryptoError::Malformed("not base64"))
        );
        assert_eq!(
            c.decrypt("row-1", "v1:AAAA"),
            Err(CryptoError::Malformed("too short"))
        );
    }

    #[test]
    fn from_config_accepts_hex_and_base64() {
        let bytes: Vec<u8> = (0u8..32).collect();
        let reference = KeyCipher::from_config(HEX_KEY).unwrap();
        let stored = reference.encrypt("row", "sk-secret");
        let forms = [
            HEX_KEY.to_uppercase(),
            format!("  {HEX_KEY}\n"),
            STANDARD.encode(&bytes),
            STANDARD_NO_PAD.encode(&bytes),
            URL_SAFE.encode(&bytes),
            URL_SAFE_NO_PAD.encode(&bytes),
        ];
        for form in forms {
            let c = KeyCipher::from_config(&form).unwrap_or_else(|e| panic!("{form:?}: {e}"));
            assert_eq!(c.decrypt("row", &stored).unwrap(), "sk-secret", "{form:?}");
        }
        // The generated base64 form is accepted and is the same key.
        let (generated, encoded) = KeyCipher::generate();
        let again = KeyCipher::from_config(&encoded).unwrap();
        assert_eq!(
            again
                .decrypt("row", &generated.encrypt("row", "sk-x"))
                .unwrap(),
            "sk-x"
        );
    }

    #[test]
    fn from_config_rejects_wrong_lengths_and_junk() {
        let b31 = vec![7u8; 31];
        let b33 = vec![7u8; 33];
        let bad = [
            hex::encode(&b31),
            hex::encode(&b33),
            STANDARD.encode(&b31),
            STANDARD.encode(&b33),
            URL_SAFE_NO_PAD.encode(&b33),
            String::new(),
            "   ".into(),
            "correct horse battery staple".into(),
            format!("{}zz", &HEX_KEY[..62]),
            "0x".to_string() + HEX_KEY,
        ];
        for value in bad {
            assert_eq!(
                KeyCipher::from_config(&value).map(|_| ()),
                Err(CryptoError::BadKey),
                "{value:?}"
            );
        }
        assert_eq!(
            CryptoError::BadKey.to_string(),
            "encryption key must be 32 bytes, given as 64 hex characters or base64"
        );
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let (c, encoded) = KeyCipher::generate();
        let shown = format!("{c:?} {c:#?}");
        assert!(shown.contains("redacted"));
        assert!(!shown.contains(&encoded));
        let c = cipher();
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains(HEX_KEY));
        // No byte of the key leaks as a decimal array either (key bytes are 0..32 here).
        assert!(!shown.contains("29, 30, 31"));
    }

    #[test]
    fn last_four_hint() {
        assert_eq!(last_four("sk-proj-abcdef1234"), "1234");
        assert_eq!(last_four("12345678"), "5678");
        assert_eq!(last_four("1234567"), "");
        assert_eq!(last_four("abc"), "");
        assert_eq!(last_four(""), "");
        // Multi-byte characters are counted whole, never split.
        assert_eq!(last_four("sk-key-éü🔑ñ"), "éü🔑ñ");
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn decrypt_never_panics_on_strings(s in ".{0,80}", row in ".{0,8}") {
            let _ = cipher().decrypt(&row, &s);
            let _ = cipher().decrypt(&row, &format!("v1:{s}"));
        }

        #[test]
        fn decrypt_rejects_random_bytes(raw in prop::collection::vec(any::<u8>(), 0..96)) {
            let stored = format!("v1:{}", STANDARD.encode(&raw));
            prop_assert!(cipher().decrypt("row", &stored).is_err());
        }

        #[test]
        fn round_trips_any_string(secret in ".{0,64}", row in ".{0,16}") {
            let c = cipher();
            prop_assert_eq!(c.decrypt(&row, &c.encrypt(&row, &secret)).unwrap(), secret);
        }

        #[test]
        fn last_four_never_panics(s in ".{0,12}") {
            let hint = last_four(&s);
            prop_assert!(hint.is_empty() || s.ends_with(&hint));
        }
    }
}
