//! A door a test opens: steps and stand-ins wait at it, so an interleaving is forced rather
//! than hoped for.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Each `pass` waits for one `open`; an `open` before the `pass` is not lost.
#[derive(Clone, Debug)]
pub struct Gate(Arc<Semaphore>);

impl Default for Gate {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(0)))
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits until the gate lets one through.
    pub async fn pass(&self) {
        self.0
            .acquire()
            .await
            .expect("gate closed for good")
            .forget();
    }

    /// Lets one waiter (present or future) through.
    pub fn open(&self) {
        self.0.add_permits(1);
    }
}
