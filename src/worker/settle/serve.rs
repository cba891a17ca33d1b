//! One consume loop of the worker: the shared consume/settle loop ([`crate::pulsar::consume`]) running
//! one path's handler, behind the poison guard.

use super::poison;
use crate::pulsar::consume::{self, AckRequests, Delivery, Disposition, LoopOptions};
use crate::pulsar::{Client, SubscribeOptions};
use crate::shutdown::Shutdown;
use crate::worker::context::{Context, WorkerError};
use std::future::Future;
use std::sync::Arc;

/// Runs one consume loop: `handle` decides what becomes of each message, and the poison guard turns
/// a message that keeps failing into a dead letter (`source` labels it).
#[allow(clippy::too_many_arguments)]
pub async fn serve<H, F>(
    ctx: &Arc<Context>,
    client: Client,
    stop: Shutdown,
    name: &'static str,
    source: &'static str,
    subscribe: SubscribeOptions,
    max_in_flight: usize,
    acks: Option<AckRequests>,
    handle: H,
) -> Result<(), WorkerError>
where
    H: Fn(Arc<Context>, Arc<Delivery>) -> F + Send + Sync + 'static,
    F: Future<Output = Disposition> + Send + 'static,
{
    let handler_ctx = ctx.clone();
    consume::run(
        client,
        LoopOptions {
            name,
            subscribe,
            max_in_flight,
            drain_timeout: ctx.settings.worker.shutdown_timeout,
            retry_after: ctx.settings.worker.retry_max_delay,
            acks,
        },
        stop,
        ctx.metrics.clone(),
        ctx.health.clone(),
        move |delivery| {
            let ctx = handler_ctx.clone();
            let delivery = Arc::new(delivery);
            let verdict = handle(ctx.clone(), delivery.clone());
            // Boxed: the handler's state machine is kilobytes, and the consume loop would otherwise
            // copy it several times per message on its way into the loop's set of handlers.
            Box::pin(async move { poison::settle(&ctx, &*delivery, source, verdict.await).await })
        },
    )
    .await
    .map_err(WorkerError::from)
}
