//! The worker's I/O as the handlers see it: [`Broker`] (publishing with the broker's receipt) and
//! [`CiApi`] (CI's job API). The real [`Publisher`] and [`CiClient`] implement them; the handlers'
//! unit tests put in-memory doubles in their place.
//!
//! [`super::Context`] is generic over both rather than holding trait objects: an `async` method
//! called through `dyn` needs its future boxed, one allocation per publish on a path that does
//! thousands a second; generics cost nothing at run time.

use crate::ci::client::{CiClient, CiError, ListQuery};
use crate::ci::response::{JobDetail, JobsResponse, QueueInfo};
use crate::ci::tree::Node;
use crate::pulsar::{Outgoing, Publisher, PulsarIoError};
use std::future::Future;

/// Where the worker stores its outcomes.
pub trait Broker: Send + Sync + 'static {
    /// Publishes `msg` to `topic`; resolves once the broker has stored it.
    fn publish(
        &self,
        topic: &str,
        msg: Outgoing,
    ) -> impl Future<Output = Result<(), PulsarIoError>> + Send;

    /// Like [`Broker::publish`], and says where the broker stored it (ledger, entry), when known.
    fn publish_at(
        &self,
        topic: &str,
        msg: Outgoing,
    ) -> impl Future<Output = Result<Option<(u64, u64)>, PulsarIoError>> + Send {
        let stored = self.publish(topic, msg);
        async move { stored.await.map(|()| None) }
    }
}

impl Broker for Publisher {
    fn publish(
        &self,
        topic: &str,
        msg: Outgoing,
    ) -> impl Future<Output = Result<(), PulsarIoError>> + Send {
        Publisher::publish(self, topic, msg)
    }

    fn publish_at(
        &self,
        topic: &str,
        msg: Outgoing,
    ) -> impl Future<Output = Result<Option<(u64, u64)>, PulsarIoError>> + Send {
        Publisher::publish_at(self, topic, msg)
    }
}

/// The calls of CI's job API the handlers make (see [`CiClient`] for what each one sends).
pub trait CiApi: Send + Sync + 'static {
    /// `POST /jobs`: the created job.
    fn submit(
        &self,
        bucket: &str,
        region: &str,
        job: &Node<'_>,
    ) -> impl Future<Output = Result<JobDetail, CiError>> + Send;

    /// `GET /jobs/<id>[,<id>…]`.
    fn describe(
        &self,
        bucket: &str,
        region: &str,
        job_ids: &[&str],
    ) -> impl Future<Output = Result<JobsResponse, CiError>> + Send;

    /// `GET /jobs?…`: one page.
    fn list(
        &self,
        bucket: &str,
        region: &str,
        query: &ListQuery,
    ) -> impl Future<Output = Result<JobsResponse, CiError>> + Send;

    /// `GET /queue`: the bucket's media processing queues.
    fn queues(
        &self,
        bucket: &str,
        region: &str,
    ) -> impl Future<Output = Result<Vec<QueueInfo>, CiError>> + Send;

    /// `PUT /jobs/<id>?cancel`.
    fn cancel(
        &self,
        bucket: &str,
        region: &str,
        job_id: &str,
    ) -> impl Future<Output = Result<(), CiError>> + Send;
}

impl CiApi for CiClient {
    fn submit(
        &self,
        bucket: &str,
        region: &str,
        job: &Node<'_>,
    ) -> impl Future<Output = Result<JobDetail, CiError>> + Send {
        CiClient::submit(self, bucket, region, job)
    }

    fn describe(
        &self,
        bucket: &str,
        region: &str,
        job_ids: &[&str],
    ) -> impl Future<Output = Result<JobsResponse, CiError>> + Send {
        CiClient::describe(self, bucket, region, job_ids)
    }

    fn list(
        &self,
        bucket: &str,
        region: &str,
        query: &ListQuery,
    ) -> impl Future<Output = Result<JobsResponse, CiError>> + Send {
        CiClient::list(self, bucket, region, query)
    }

    fn queues(
        &self,
        bucket: &str,
        region: &str,
    ) -> impl Future<Output = Result<Vec<QueueInfo>, CiError>> + Send {
        CiClient::queues(self, bucket, region)
    }

    fn cancel(
        &self,
        bucket: &str,
        region: &str,
        job_id: &str,
    ) -> impl Future<Output = Result<(), CiError>> + Send {
        CiClient::cancel(self, bucket, region, job_id)
    }
}
