//! `credentials`: the chain `ci-worker run` uses ([`crate::credentials::resolve`]) run once; the
//! line names the source that answered, never a key.

use super::check::Check;
use crate::ci::sign::SharedCredentials;
use crate::config::Settings;
use crate::credentials::{resolve, CredentialError, Source};
use crate::shutdown::Shutdown;
use std::collections::HashMap;

pub const NAME: &str = "credentials";

const NO_SOURCE_FIX: &str = "set TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY (or ci.secret_id / ci.secret_key); on TKE, give the pod's service account a CAM role (the TKE_* variables of its OIDC identity); on a CVM, bind a CAM role to the instance (see README \"Going live on Tencent Cloud\")";

/// The line for the chain's outcome: the source, or why none.
pub fn judge(outcome: Result<Option<&Source>, &CredentialError>) -> Check {
    match outcome {
        Ok(Some(source)) => Check::ok(NAME, format!("from {source}")),
        Ok(None) => Check::fail(
            NAME,
            "no source gave keys (keys, profile file, TKE OIDC, CVM role, ci.credentials_file): CI and CMQ refuse unsigned requests",
            NO_SOURCE_FIX,
        ),
        Err(e) => Check::fail(NAME, e.to_string(), fix_for(e)),
    }
}

fn fix_for(e: &CredentialError) -> &'static str {
    match e {
        CredentialError::File { .. } => {
            "make ci.credentials_file a readable JSON object with TmpSecretId, TmpSecretKey (and Token, ExpiredTime for temporary keys), or empty the key"
        }
        CredentialError::Role { .. } | CredentialError::DiscoveredRole { .. } => {
            "bind the CAM role to the instance (CVM console: instance → Bind role) and name it in ci.cvm_role, or use another source"
        }
        CredentialError::Profile { .. } => {
            "give the profile file secret_id and secret_key under [default], or remove it"
        }
        CredentialError::Tke(_) => {
            "check the TKE_* variables of the pod (TKE_ROLE_ARN, TKE_PROVIDER_ID, TKE_WEB_IDENTITY_TOKEN_FILE, TKE_REGION) and that the CAM role trusts the cluster's OIDC provider (its role carrier)"
        }
        CredentialError::Invalid(_) => {
            "set both halves: ci.secret_id and ci.secret_key (or TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY)"
        }
    }
}

/// Runs the chain over `settings` and `vars`; the keys (kept current until `stop`) when it answered.
pub async fn check(
    settings: &Settings,
    vars: &HashMap<String, String>,
    stop: &Shutdown,
) -> (Check, Option<SharedCredentials>) {
    let outcome = resolve(settings, vars, stop).await;
    let check = judge(outcome.as_ref().map(|r| r.as_ref().map(|r| &r.source)));
    (check, outcome.ok().flatten().map(|r| r.credentials))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::check::Status;

    #[test]
    fn the_source_is_named_and_none_is_a_failure() {
        let source = Source::TkeOidc {
            role_arn: "qcs::cam::uin/1:roleName/w".into(),
        };
        let ok = judge(Ok(Some(&source)));
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(ok.detail, "from TKE OIDC (role qcs::cam::uin/1:roleName/w)");
        let none = judge(Ok(None));
        assert_eq!(none.status, Status::Fail);
        assert!(none.fix.unwrap().contains("TENCENTCLOUD_SECRET_ID"));
        let bad = judge(Err(&CredentialError::Tke("STS refused".into())));
        assert_eq!(bad.detail, "TKE OIDC: STS refused");
        assert!(bad.fix.unwrap().contains("TKE_ROLE_ARN"));
    }
}
