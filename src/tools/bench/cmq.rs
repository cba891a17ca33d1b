//! The emulator's TDMQ for CMQ API for the sections that send events through CMQ (`ingress`, `cmq`,
//! `messages`): an emulator serving it on a port of its own, fresh queues, and the worker's `cmq`
//! ingress settings.

use super::procs::{self, Proc};
use super::{short, Bench, BENCH_SECRET_ID, BENCH_SECRET_KEY};
use crate::cmq::client::{CmqClient, QueueAttributes};
use crate::cmq::sign::{CmqCredentials, SignatureMethod};
use crate::secret::Secret;
use anyhow::Result;
use std::time::Duration;

/// An emulator whose CMQ API answers at `endpoint`, and a client of it.
pub(super) struct CmqSide {
    pub(super) emulator: Proc,
    pub(super) endpoint: String,
    pub(super) client: CmqClient,
}

impl CmqSide {
    /// A fresh queue (named after `label`) that holds events as long as a run lasts.
    pub(super) async fn new_queue(&self, bench: &Bench, label: &str) -> Result<String> {
        let queue = bench.cmq_queue_name(label);
        self.client
            .create_queue(
                &queue,
                &QueueAttributes {
                    visibility_timeout: Some(60),
                    max_msg_size: Some(1_048_576),
                    ..QueueAttributes::default()
                },
            )
            .await?;
        Ok(queue)
    }
}

impl Bench {
    /// Starts an emulator whose CMQ API answers on a port of its own (queues made with
    /// [`CmqSide::new_queue`]).
    pub(super) async fn start_cmq_emulator(&mut self) -> Result<CmqSide> {
        let port = procs::free_port()?;
        let cmq_port = procs::free_port()?;
        let mut env = self.base_env();
        for (k, v) in [
            ("CI_WORKER__EMULATOR__LISTEN", format!("127.0.0.1:{port}")),
            ("CI_WORKER__EMULATOR__TDMQ_DELIVERY", "cmq".into()),
            (
                "CI_WORKER__EMULATOR__CMQ_LISTEN",
                format!("127.0.0.1:{cmq_port}"),
            ),
            ("CI_WORKER__EMULATOR__CMQ_QUEUES", String::new()),
        ] {
            env.insert(k.into(), v);
        }
        let mut emulator = Proc::spawn(
            &format!("emulator-cmq-{}", short()),
            &["emulator"],
            &env,
            &self.log_dir,
        )?;
        procs::wait_http_ok(
            &format!("http://127.0.0.1:{port}/healthz"),
            &mut emulator,
            Duration::from_secs(30),
        )
        .await?;
        let endpoint = format!("http://127.0.0.1:{cmq_port}");
        let client = CmqClient::new(
            &endpoint,
            CmqCredentials {
                secret_id: BENCH_SECRET_ID.into(),
                secret_key: Secret::new(BENCH_SECRET_KEY),
                token: None,
            },
            SignatureMethod::HmacSha256,
            Duration::from_secs(10),
        )?;
        Ok(CmqSide {
            emulator,
            endpoint,
            client,
        })
    }

    /// The `cmq` ingress settings of the workers started next: `queue` at `endpoint`, batch 16,
    /// `concurrency` receive loops.
    pub(super) fn cmq_worker_env(&mut self, endpoint: &str, queue: &str, concurrency: usize) {
        for (k, v) in [
            ("CI_WORKER__WORKER__CALLBACK_INGRESS", "cmq".to_string()),
            ("CI_WORKER__CMQ__ENDPOINT", endpoint.to_string()),
            ("CI_WORKER__CMQ__QUEUE", queue.to_string()),
            ("CI_WORKER__CMQ__BATCH_SIZE", "16".to_string()),
            ("CI_WORKER__CMQ__CONCURRENCY", concurrency.to_string()),
            ("CI_WORKER__CMQ__POLLING_WAIT", "1s".to_string()),
        ] {
            self.extra_worker_env.insert(k.to_string(), v);
        }
    }

    fn cmq_queue_name(&self, label: &str) -> String {
        // CMQ's rule: a letter first, letters, digits and `-`, at most 64.
        format!("bench-{}-{label}-{}", self.id, short())
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(64)
            .collect()
    }
}
