//! CI's completion events: [`parse`] reads XML or JSON (detected per message) with every documented
//! quirk; [`normalize`] turns them into [`crate::result::JobResult`]s.

pub mod normalize;
pub mod parse;
