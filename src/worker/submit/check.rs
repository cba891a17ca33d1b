//! Which check a request needs at CI before it is submitted, from what the attempt records said
//! ([`Claim`]) and whether an earlier attempt of this process lost its answer. Pure.

use crate::worker::replica_log::attempts::Claim;
use std::time::{Duration, SystemTime};

/// Clock difference allowed between the pipeline's producers and the worker's hosts, when comparing
/// a request's publish time with what the attempt records cover.
pub const PUBLISH_SKEW: Duration = Duration::from_secs(2);

/// How a request must be checked against CI before it is submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Nothing suggests a job may exist: submit.
    None,
    /// A job may exist: look for the marker among the jobs created since then ([`super::recovery::Recovery::search`]).
    Marker(SystemTime),
    /// Published before this process knew every attempt (it started, or may have missed or
    /// forgotten records, at that time): the shared scan of its queue taken since
    /// ([`super::recovery::Recovery::lookup`]), one for a whole backlog.
    RestartScan(SystemTime),
}

/// Which check a request published at `published` needs, given what the attempt records said
/// (`claim`) and whether an earlier attempt of this process lost its answer (`in_doubt`).
pub fn check_for(claim: &Claim, in_doubt: Option<SystemTime>, published: SystemTime) -> Check {
    if let Some(since) = [claim.earlier_attempt, in_doubt]
        .into_iter()
        .flatten()
        .min()
    {
        return Check::Marker(since);
    }
    match claim.known_since {
        // Nothing is sure: any attempt came after the request was published.
        None => Check::Marker(published),
        Some(known) => {
            let horizon = known.max(claim.forgotten_until);
            if published < horizon + PUBLISH_SKEW {
                Check::RestartScan(horizon)
            } else {
                Check::None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn which_check_a_request_needs() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let secs = |s: u64| t0 + Duration::from_secs(s);
        let claim = |earlier: Option<SystemTime>, known: Option<SystemTime>| Claim {
            earlier_attempt: earlier,
            known_since: known,
            forgotten_until: UNIX_EPOCH,
        };
        let started = claim(None, Some(t0));
        assert_eq!(
            check_for(&started, None, secs(60)),
            Check::None,
            "a fresh request"
        );
        assert_eq!(
            check_for(&claim(Some(secs(50)), Some(t0)), None, secs(40)),
            Check::Marker(secs(50)),
            "another attempt was recorded"
        );
        assert_eq!(
            check_for(&claim(Some(secs(50)), Some(t0)), Some(secs(45)), secs(40)),
            Check::Marker(secs(45)),
            "the earliest of the attempts"
        );
        assert_eq!(
            check_for(&started, Some(secs(70)), secs(60)),
            Check::Marker(secs(70)),
            "a lost answer"
        );
        assert_eq!(
            check_for(&started, None, t0 - Duration::from_secs(3600)),
            Check::RestartScan(t0),
            "published before attempts were known here"
        );
        assert_eq!(
            check_for(&started, None, secs(1)),
            Check::RestartScan(t0),
            "within the clock skew allowed"
        );
        assert_eq!(
            check_for(&claim(None, None), None, secs(60)),
            Check::Marker(secs(60)),
            "own record not read back: nothing is sure"
        );
        let forgetful = Claim {
            forgotten_until: secs(100),
            ..started
        };
        assert_eq!(
            check_for(&forgetful, None, secs(90)),
            Check::RestartScan(secs(100)),
            "records forgotten or missed: a scan taken since"
        );
        assert_eq!(check_for(&forgetful, None, secs(200)), Check::None);
    }
}
