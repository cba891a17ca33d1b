//! The CAM actions CI checks for each call this crate makes, as a sub-account's policy names them
//! (CI's "Authorization Granularity Details", 1045/58195; the submit pages: "When used with a
//! sub-account, the ci:CreateMediaJobs permission is required … the cam:passrole permission is
//! required" for asynchronous jobs, since CI reads and writes COS through the role passed to it).
//!
//! CI's refusal does not say which action was missing (`AccessDenied`, "No permission" or "The
//! operation is prohibited", error-codes.md): a caller names the actions the refused call needs.

/// `POST /jobs`.
pub const CREATE_MEDIA_JOBS: &str = "ci:CreateMediaJobs";
/// `POST /jobs` of an asynchronous job: CI works on COS under the role passed to it.
pub const PASS_ROLE: &str = "cam:PassRole";
/// `GET /jobs/<id>`.
pub const DESCRIBE_MEDIA_JOB: &str = "ci:DescribeMediaJob";
/// `GET /jobs?…`.
pub const DESCRIBE_MEDIA_JOBS: &str = "ci:DescribeMediaJobs";
/// `PUT /jobs/<id>?cancel`.
pub const CANCEL_MEDIA_JOB: &str = "ci:CancelMediaJob";
/// `GET /queue`.
pub const DESCRIBE_MEDIA_QUEUES: &str = "ci:DescribeMediaQueues";

/// Every action above: the ones a worker's policy grants.
pub const ALL: [&str; 6] = [
    CREATE_MEDIA_JOBS,
    PASS_ROLE,
    DESCRIBE_MEDIA_JOB,
    DESCRIBE_MEDIA_JOBS,
    CANCEL_MEDIA_JOB,
    DESCRIBE_MEDIA_QUEUES,
];

/// The calls of the job API this crate makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Submit,
    Describe,
    List,
    Cancel,
    Queues,
}

impl Call {
    /// The actions CI checks for this call.
    pub fn actions(self) -> &'static [&'static str] {
        match self {
            Call::Submit => &[CREATE_MEDIA_JOBS, PASS_ROLE],
            Call::Describe => &[DESCRIBE_MEDIA_JOB],
            Call::List => &[DESCRIBE_MEDIA_JOBS],
            Call::Cancel => &[CANCEL_MEDIA_JOB],
            Call::Queues => &[DESCRIBE_MEDIA_QUEUES],
        }
    }
}

/// The action of [`ALL`] spelled `name` (case-insensitive, as CAM reads action names).
pub fn known(name: &str) -> Option<&'static str> {
    ALL.iter().copied().find(|a| a.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_needs_known_actions_and_submit_needs_pass_role() {
        for call in [
            Call::Submit,
            Call::Describe,
            Call::List,
            Call::Cancel,
            Call::Queues,
        ] {
            assert!(call.actions().iter().all(|a| known(a) == Some(*a)));
        }
        assert_eq!(Call::Submit.actions(), [CREATE_MEDIA_JOBS, PASS_ROLE]);
        assert_eq!(known("CAM:passrole"), Some(PASS_ROLE));
        assert_eq!(known("ci:DeleteBucket"), None);
    }
}
