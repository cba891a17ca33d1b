//! `ci-worker doctor`: checks, before a deployment runs, every external dependency its
//! configuration names — the credentials, CI for each bucket given, the callback target, the
//! Pulsar topics — and says for each what was checked, `ok`, `skipped` or `FAIL` with the problem
//! and its fix. Nothing it does creates a job or changes a resource: CI is asked with read-only
//! calls and an empty `POST /jobs` CI cannot make a job of, CMQ with `GetQueueAttributes`, Pulsar
//! with look-ups, a producer that sends nothing and a throwaway subscription it deletes.
//!
//! # Layout
//! - this file: [`run`], the order of the checks, and [`DoctorError`].
//! - [`check`]: [`Check`] and [`Report`], their lines and JSON (pure).
//! - [`credentials`]: the credential chain `ci-worker run` uses, run once.
//! - [`ci`]: one bucket's CI checks (binding, media queue, permissions) and [`Target`].
//! - [`callback`]: the callback route, the CMQ queue and its unack time, the URL, Kafka.
//! - [`pulsar`]: the broker and each topic of `[pulsar]`.
//!
//! The children import nothing from this file, nor each other but [`check`].

pub mod callback;
pub mod check;
pub mod ci;
pub mod credentials;
pub mod pulsar;

pub use check::{Check, Report, Status};
pub use ci::Target;

use crate::ci::client::CiClient;
use crate::config::Settings;
use crate::shutdown::Shutdown;
use std::collections::HashMap;

/// What keeps the doctor from checking at all (a check that fails is a line of the [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error(
        "--bucket and --region go in pairs: {buckets} bucket(s) and {regions} region(s) given"
    )]
    Unpaired { buckets: usize, regions: usize },
    #[error("cannot build the CI client: {0}")]
    Client(String),
}

/// The targets of `--bucket B --region R`…, paired in the order given.
pub fn targets(buckets: &[String], regions: &[String]) -> Result<Vec<Target>, DoctorError> {
    if buckets.len() != regions.len() {
        return Err(DoctorError::Unpaired {
            buckets: buckets.len(),
            regions: regions.len(),
        });
    }
    Ok(buckets
        .iter()
        .zip(regions)
        .map(|(b, r)| Target {
            bucket: b.trim().to_string(),
            region: r.trim().to_string(),
        })
        .collect())
}

/// Runs every check over `settings` (and `vars`, the environment the credential chain reads).
pub async fn run(
    settings: &Settings,
    targets: &[Target],
    vars: &HashMap<String, String>,
) -> Result<Report, DoctorError> {
    let stop = Shutdown::new();
    let mut report = Report::default();
    let (credentials_line, keys) = credentials::check(settings, vars, &stop).await;
    report.push(credentials_line);
    if targets.is_empty() {
        report.push(Check::skipped(
            "ci bucket",
            "no --bucket/--region given: the signature, the CI binding, the media queue and the permissions are checked per bucket",
        ));
    } else if keys.is_none() {
        for t in targets {
            report.push(Check::skipped(
                format!("ci {} ({})", t.bucket, t.region),
                "no credentials to sign CI calls with",
            ));
        }
    } else {
        let client = CiClient::with_shared(
            settings.ci.endpoint.as_ref().map(|u| u.as_str()),
            keys.clone(),
            settings.ci.request_timeout,
        )
        .map_err(|e| DoctorError::Client(e.to_string()))?;
        for t in targets {
            report.extend(ci::checks(&client, t, &settings.ci.queue_id).await);
        }
    }
    report.extend(callback::checks(settings, keys.as_ref()).await);
    report.extend(pulsar::checks(settings).await);
    // Ends the refresh of temporary keys.
    stop.trigger();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_regions_pair_in_order() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let t = targets(&s(&["a-1", "b-1"]), &s(&["ap-guangzhou", "ap-beijing"])).unwrap();
        assert_eq!(t[1].bucket, "b-1");
        assert_eq!(t[1].region, "ap-beijing");
        let e = targets(&s(&["a-1"]), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--bucket and --region go in pairs: 1 bucket(s) and 0 region(s) given"
        );
    }
}
