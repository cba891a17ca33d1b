//! The replica log: what the replicas tell each other through `pulsar.done_topic`, so that a job is
//! submitted once and finished once whichever replica gets its messages. Two records go there
//! ([`crate::worker::record`]): `done` (a job's final result is out) and `attempts` (a replica is
//! about to submit these requests); every replica writes its own and reads everyone's.
//!
//! The handlers use this room through a narrow surface, so that how the records travel (today:
//! broadcast to every replica on one unpartitioned topic) can change behind it:
//! - writing: [`done::DoneRecorder`] (`record`, `record_later`, `flush`) and
//!   [`attempts::Attempts::claim`] (store an attempt, read it back, say what came before it);
//! - knowing: [`finished::FinishedJobs`] (`insert`, `contains`, `remove`) and the [`attempts::Claim`];
//! - reading: [`reader::run`], the one loop that feeds both from the topic.
//!
//! - [`group_commit`]: items stored in batches, one batch per broker round trip (the done and attempt
//!   records, and the deadline records outside this room).
//! - [`done`]: the done records' writer.
//! - [`attempts`]: the attempt records' writer and what this process knows of everyone's attempts.
//! - [`finished`]: the window of jobs whose final result is out.
//! - [`reader`]: the done topic's consume loop.

pub mod attempts;
pub mod done;
pub mod finished;
pub mod group_commit;
pub mod reader;
