//! Which consume loops have a working consumer: what `/readyz` reports.

use std::collections::HashMap;

/// Which loops have a working consumer (for `/readyz`).
#[derive(Default)]
pub struct Health {
    loops: std::sync::Mutex<HashMap<&'static str, bool>>,
}

impl Health {
    pub fn set(&self, name: &'static str, ok: bool) {
        self.loops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, ok);
    }

    /// The loops without a working consumer (empty = all subscribed).
    pub fn failing(&self) -> Vec<&'static str> {
        let loops = self.loops.lock().unwrap_or_else(|e| e.into_inner());
        let mut failing: Vec<&'static str> = loops
            .iter()
            .filter(|(_, ok)| !**ok)
            .map(|(n, _)| *n)
            .collect();
        failing.sort_unstable();
        failing
    }
}
