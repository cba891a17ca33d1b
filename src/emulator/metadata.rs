//! The CVM instance metadata path for CAM role credentials, on the job API's listener (so one
//! address serves `ci.endpoint` and `ci.metadata_endpoint`):
//!
//! - `GET /latest/meta-data/cam/security-credentials/` → the first of `emulator.cvm_roles` as plain
//!   text (how the SDKs discover the bound role), 404 without any;
//! - `GET /latest/meta-data/cam/security-credentials/<role>` → `{"TmpSecretId", "TmpSecretKey",
//!   "ExpiredTime", "Expiration", "Token", "Code": "Success"}` for a configured role, 404 otherwise.
//!
//! STS `AssumeRoleWithWebIdentity` ([`super::sts`]) issues its key sets here too, one per call.
//!
//! Each role has one current key set, handed out until half of
//! `emulator.temporary_credentials_lifetime` is gone, then replaced by a new one (the metadata
//! service rotates before expiry; the old set stays valid until its own `ExpiredTime`). The CI and
//! CMQ APIs accept every issued set until it expires and refuse it after, with their codes for it
//! (CI: 401 `SignatureExpired`; CMQ: 4100 `(10080)secret id status error`).

use crate::secret::Secret;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// The path prefix every metadata request starts with.
pub(crate) const PATH: &str = "/latest/meta-data/cam/security-credentials/";
/// Expired sets are remembered this long past their expiry (then forgotten: `SecretidNotExist`).
const FORGET_AFTER_S: i64 = 3600;

/// One issued key set.
pub(crate) struct Issued {
    pub(crate) secret_id: String,
    pub(crate) secret_key: Secret,
    pub(crate) token: Secret,
    pub(crate) expired_time: i64,
}

impl Issued {
    /// Whether a request at `now` (Unix seconds) may use this set.
    pub(crate) fn expired(&self, now: i64) -> bool {
        now >= self.expired_time
    }
}

#[derive(Default)]
struct State {
    current: HashMap<String, Arc<Issued>>,
    by_id: HashMap<String, Arc<Issued>>,
}

/// The roles' key sets, shared by the metadata path and both APIs' verification.
pub(crate) struct TemporaryKeys {
    roles: Vec<String>,
    lifetime: i64,
    state: Mutex<State>,
}

impl TemporaryKeys {
    pub(crate) fn new(roles: &[String], lifetime_secs: u64) -> TemporaryKeys {
        TemporaryKeys {
            roles: roles.to_vec(),
            lifetime: lifetime_secs.max(1) as i64,
            state: Mutex::default(),
        }
    }

    pub(crate) fn has_roles(&self) -> bool {
        !self.roles.is_empty()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    /// The key set to hand out for `role` at `now`; `None` for a role not configured.
    pub(crate) fn for_role(&self, role: &str, now: i64) -> Option<Arc<Issued>> {
        if !self.roles.iter().any(|r| r == role) {
            return None;
        }
        let mut state = self.lock();
        if let Some(current) = state.current.get(role) {
            if (current.expired_time - now) * 2 > self.lifetime {
                return Some(current.clone());
            }
        }
        let issued = Self::register(&mut state, self.lifetime, now);
        state.current.insert(role.to_string(), issued.clone());
        Some(issued)
    }

    /// A new key set valid for `lifetime_secs` (at most `emulator.temporary_credentials_lifetime`)
    /// from `now`, accepted by both APIs until it expires: what STS `AssumeRoleWithWebIdentity`
    /// hands out.
    pub(crate) fn issue(&self, lifetime_secs: Option<i64>, now: i64) -> Arc<Issued> {
        let lifetime = lifetime_secs.map_or(self.lifetime, |l| l.clamp(1, self.lifetime));
        Self::register(&mut self.lock(), lifetime, now)
    }

    fn register(state: &mut State, lifetime: i64, now: i64) -> Arc<Issued> {
        let issued = Arc::new(Issued {
            secret_id: format!("AKIDemu{}", random_hex(16)),
            secret_key: Secret::new(random_hex(20)),
            token: Secret::new(format!("emu-token-{}", random_hex(24))),
            expired_time: now + lifetime,
        });
        state
            .by_id
            .retain(|_, k| now - k.expired_time < FORGET_AFTER_S);
        state.by_id.insert(issued.secret_id.clone(), issued.clone());
        issued
    }

    /// `ExpiredTime` as the `Expiration` text both answers carry (`2021-03-12T23:00:47Z`).
    pub(crate) fn expiration(expired_time: i64) -> String {
        chrono::DateTime::from_timestamp(expired_time, 0)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default()
    }

    /// The issued set with this SecretId (expired or not), if any.
    pub(crate) fn lookup(&self, secret_id: &str) -> Option<Arc<Issued>> {
        self.lock().by_id.get(secret_id).cloned()
    }

    /// The metadata answer for `path` (the part after [`PATH`]) at `now`: status and body.
    pub(crate) fn answer(&self, rest: &str, now: i64) -> (u16, String) {
        let not_found = (404, "404 - Not Found".to_string());
        let role = rest.trim_end_matches('/');
        if role.is_empty() {
            return match self.roles.first() {
                Some(r) => (200, r.clone()),
                None => not_found,
            };
        }
        let Some(k) = self.for_role(role, now) else {
            return not_found;
        };
        let expiration = Self::expiration(k.expired_time);
        let body = serde_json::json!({
            "TmpSecretId": k.secret_id,
            "TmpSecretKey": k.secret_key.expose(),
            "ExpiredTime": k.expired_time,
            "Expiration": expiration,
            "Token": k.token.expose(),
            "Code": "Success",
        });
        (200, body.to_string())
    }
}

fn random_hex(bytes: usize) -> String {
    let v: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_gets_one_key_set_until_half_its_life_then_a_new_one() {
        let keys = TemporaryKeys::new(&["CVMas".to_string()], 100);
        assert!(keys.for_role("Other", 0).is_none());
        let first = keys.for_role("CVMas", 1000).unwrap();
        assert_eq!(first.expired_time, 1100);
        assert_eq!(
            keys.for_role("CVMas", 1049).unwrap().secret_id,
            first.secret_id
        );
        let second = keys.for_role("CVMas", 1050).unwrap();
        assert_ne!(second.secret_id, first.secret_id);
        assert_eq!(second.expired_time, 1150);
        // Both stay known; the first expires at its own time.
        let old = keys.lookup(&first.secret_id).unwrap();
        assert!(!old.expired(1099) && old.expired(1100));
        assert!(keys.lookup("AKIDunknown").is_none());
        // A set issued on its own (STS) lasts the lifetime, or less when asked, and is known.
        let sts = keys.issue(None, 2000);
        assert_eq!(sts.expired_time, 2100);
        assert_eq!(keys.issue(Some(30), 2000).expired_time, 2030);
        assert_eq!(keys.issue(Some(7200), 2000).expired_time, 2100);
        assert_eq!(keys.lookup(&sts.secret_id).unwrap().expired_time, 2100);
    }

    #[test]
    fn answers_are_the_cvm_metadata_format() {
        let keys = TemporaryKeys::new(&["CVMas".to_string()], 7200);
        assert_eq!(keys.answer("", 0), (200, "CVMas".to_string()));
        assert_eq!(keys.answer("Nope", 0).0, 404);
        let (status, body) = keys.answer("CVMas", 1_615_582_847);
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["ExpiredTime"], 1_615_590_047);
        assert_eq!(v["Expiration"], "2021-03-12T23:00:47Z");
        assert_eq!(v["Code"], "Success");
        for field in ["TmpSecretId", "TmpSecretKey", "Token"] {
            assert!(!v[field].as_str().unwrap().is_empty(), "{field}");
        }
        let none = TemporaryKeys::new(&[], 7200);
        assert_eq!(none.answer("", 0).0, 404);
    }
}
