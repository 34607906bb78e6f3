//! Background sealing of chunks, and the bound on buffered write data.
//!
//! A write that fills a chunk hands it to a small pool of threads, which hash
//! it and write it to the chunk store while the writer goes on with the next
//! chunk: the FUSE copy, SHA-256 and the chunk write of consecutive chunks
//! overlap. The bytes held in write buffers across the daemon are counted by
//! [`Budget`]; a writer that finds the budget exhausted waits for seals to
//! finish, so memory does not grow with file size or the number of writers.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use parking_lot::{Condvar, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed pool of sealing threads, started by the first job: a daemon that
/// only serves archives never pays for them, and `fsd mount` comes up
/// sooner.
pub struct Sealer {
    tx: Mutex<Sender<Job>>,
    /// The queue's receiving end until the first job starts the threads,
    /// which then hold it alone: a pool that is gone (no thread could
    /// start, or all died) makes `send` fail and the job run inline.
    rx: Mutex<Option<Receiver<Job>>>,
    threads: usize,
    started: std::sync::Once,
}

impl Sealer {
    pub fn new(threads: usize) -> Arc<Self> {
        let (tx, rx) = channel::<Job>();
        Arc::new(Sealer {
            tx: Mutex::new(tx),
            rx: Mutex::new(Some(rx)),
            threads: threads.max(1),
            started: std::sync::Once::new(),
        })
    }

    fn start(&self) {
        let Some(rx) = self.rx.lock().take() else {
            return;
        };
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..self.threads {
            let rx = rx.clone();
            let _ = std::thread::Builder::new()
                .name(format!("fsd-seal-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
        }
    }

    /// Queues a job; if the pool is gone (shutdown), runs it here.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        self.started.call_once(|| self.start());
        let job: Job = Box::new(job);
        if let Err(e) = self.tx.lock().send(job) {
            (e.0)();
        }
    }
}

/// The daemon-wide count of buffered write bytes.
pub struct Budget {
    used: Mutex<u64>,
    cv: Condvar,
    limit: u64,
    peak: Mutex<u64>,
}

impl Budget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Budget {
            used: Mutex::new(0),
            cv: Condvar::new(),
            limit,
            peak: Mutex::new(0),
        })
    }

    pub fn add(&self, n: u64) {
        let mut u = self.used.lock();
        *u += n;
        let mut p = self.peak.lock();
        *p = (*p).max(*u);
    }

    pub fn sub(&self, n: u64) {
        let mut u = self.used.lock();
        *u = u.saturating_sub(n);
        if *u <= self.limit {
            self.cv.notify_all();
        }
    }

    pub fn over(&self) -> bool {
        *self.used.lock() > self.limit
    }

    /// Waits until the buffered bytes are within the limit, or `timeout`.
    pub fn wait_below(&self, timeout: std::time::Duration) {
        let mut u = self.used.lock();
        if *u > self.limit {
            self.cv.wait_for(&mut u, timeout);
        }
    }

    pub fn used(&self) -> u64 {
        *self.used.lock()
    }

    /// The most ever buffered at once (reported by `tokenctl status`).
    pub fn peak(&self) -> u64 {
        *self.peak.lock()
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_runs_jobs() {
        let s = Sealer::new(2);
        let (tx, rx) = channel();
        for i in 0..10 {
            let tx = tx.clone();
            s.submit(move || tx.send(i).unwrap());
        }
        let mut got: Vec<i32> = (0..10).map(|_| rx.recv().unwrap()).collect();
        got.sort();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn budget_tracks_peak_and_wakes() {
        let b = Budget::new(100);
        b.add(150);
        assert!(b.over());
        let b2 = b.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            b2.sub(100);
        });
        b.wait_below(std::time::Duration::from_secs(5));
        assert!(!b.over());
        t.join().unwrap();
        assert_eq!(b.peak(), 150);
        assert_eq!(b.used(), 50);
    }
}
