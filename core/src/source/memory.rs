//! An in-memory change stream: events given up front, then an idle stream. For engine tests
//! without servers (and for a push-only source: it cannot replay, so a restart is given the
//! events again by the caller).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::source::stream::{ChangeStream, SourceEvent, StreamPosition};

/// Delivers `events` in order, then nothing (it never ends by itself). Records every ack.
pub struct MemoryStream<P: StreamPosition> {
    events: VecDeque<Result<SourceEvent<P>>>,
    acks: Arc<Mutex<Vec<P>>>,
}

impl<P: StreamPosition> MemoryStream<P> {
    pub fn new(events: impl IntoIterator<Item = Result<SourceEvent<P>>>) -> Self {
        MemoryStream {
            events: events.into_iter().collect(),
            acks: Arc::default(),
        }
    }
    /// The positions acked so far, shared with the stream.
    pub fn acks(&self) -> Arc<Mutex<Vec<P>>> {
        self.acks.clone()
    }
}

impl<P: StreamPosition> ChangeStream<P> for MemoryStream<P> {
    async fn next(&mut self) -> Option<Result<SourceEvent<P>>> {
        match self.events.pop_front() {
            Some(ev) => Some(ev),
            None => std::future::pending().await,
        }
    }
    fn ack(&mut self, durable: &P) {
        if let Ok(mut acks) = self.acks.lock() {
            acks.push(durable.clone());
        }
    }
    async fn stop(self) -> Result<()> {
        Ok(())
    }
}
