//! A persistent pool of host threads for the CPU stages of the frame loop
//! (the CPU entropy coder, `--entropy cpu` and the GPU coder's fallback):
//! one thread per core, started on first use, so no frame spawns a thread.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The pool: jobs go in through one channel, each thread takes the next.
#[derive(Debug)]
pub struct HostPool {
    jobs: Mutex<mpsc::Sender<Job>>,
    threads: usize,
}

impl HostPool {
    /// The process's pool, a thread per core.
    pub fn global() -> &'static HostPool {
        static POOL: OnceLock<HostPool> = OnceLock::new();
        POOL.get_or_init(|| HostPool::new(std::thread::available_parallelism().map_or(1, |n| n.get())))
    }

    fn new(threads: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("tessera-host-{i}"))
                .spawn(move || loop {
                    let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match next {
                        Ok(job) => job(),
                        Err(_) => return, // the pool is gone
                    }
                })
                .expect("spawning a host pool thread");
        }
        Self { jobs: Mutex::new(tx), threads }
    }

    /// Threads in the pool.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs every job on the pool and returns their results in order; a job
    /// that panicked panics here, once the others are in. Not for a job of
    /// the pool itself: it would wait for a thread it holds.
    pub fn run<T: Send + 'static>(&self, jobs: Vec<Box<dyn FnOnce() -> T + Send>>) -> Vec<T> {
        let n = jobs.len();
        let (tx, rx) = mpsc::channel();
        {
            let sender = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            for (i, job) in jobs.into_iter().enumerate() {
                let tx = tx.clone();
                let wrapped: Job = Box::new(move || {
                    let result = catch_unwind(AssertUnwindSafe(job));
                    // The caller waits for every result; it is gone only if
                    // it unwound itself, and then nobody needs this one.
                    drop(tx.send((i, result)));
                });
                sender.send(wrapped).expect("the host pool's threads live as long as the process");
            }
        }
        drop(tx);
        let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
        let mut panicked = None;
        for (i, result) in rx.iter().take(n) {
            match result {
                Ok(value) => out[i] = Some(value),
                Err(payload) => panicked = Some(payload),
            }
        }
        if let Some(payload) = panicked {
            resume_unwind(payload);
        }
        out.into_iter().map(|v| v.expect("every job of the pool answers")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_order_on_the_same_threads() {
        let pool = HostPool::new(3);
        let names = |n: usize| -> Vec<Box<dyn FnOnce() -> (usize, String) + Send>> {
            (0..n)
                .map(|i| {
                    Box::new(move || (i * i, std::thread::current().name().unwrap_or_default().to_string()))
                        as Box<dyn FnOnce() -> (usize, String) + Send>
                })
                .collect()
        };
        let first = pool.run(names(10));
        assert_eq!(first.iter().map(|r| r.0).collect::<Vec<_>>(), (0..10).map(|i| i * i).collect::<Vec<_>>());
        let second = pool.run(names(10));
        let threads: std::collections::BTreeSet<&str> = first.iter().chain(&second).map(|r| r.1.as_str()).collect();
        assert!(threads.len() <= 3 && threads.iter().all(|t| t.starts_with("tessera-host-")), "{threads:?}");
    }

    #[test]
    fn a_panicking_job_panics_the_caller_and_the_pool_lives_on() {
        let pool = HostPool::new(2);
        let jobs: Vec<Box<dyn FnOnce() -> u32 + Send>> =
            vec![Box::new(|| 1), Box::new(|| panic!("boom")), Box::new(|| 3)];
        assert!(catch_unwind(AssertUnwindSafe(|| pool.run(jobs))).is_err());
        let jobs: Vec<Box<dyn FnOnce() -> u32 + Send>> = vec![Box::new(|| 4), Box::new(|| 5)];
        assert_eq!(pool.run(jobs), vec![4, 5]);
    }
}
