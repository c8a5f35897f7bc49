//! Retry delays: exponential backoff with full jitter and a cap, lengthened when
//! the worker is overloaded.

use std::time::Duration;

/// The delay before attempt `attempt + 1` after `attempt` failed (attempt >= 1).
/// `overload` is queued work over the concurrency limit (0 when idle); the delay
/// grows with it so that retries do not pile onto a saturated worker.
/// `unit` is a uniform random number in [0, 1): full jitter.
pub fn backoff(attempt: u32, base: Duration, cap: Duration, overload: f64, unit: f64) -> Duration {
    let exp = base.as_secs_f64() * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
    let stretched = exp * (1.0 + overload.clamp(0.0, 4.0));
    let ceiling = stretched.min(cap.as_secs_f64());
    Duration::from_secs_f64(ceiling * unit.clamp(0.0, 1.0))
}

/// A uniform random number in [0, 1) from the OS.
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_jitters() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(backoff(1, base, cap, 0.0, 0.999_999).as_millis(), 99);
        assert_eq!(backoff(3, base, cap, 0.0, 0.999_999).as_millis(), 399);
        assert_eq!(backoff(20, base, cap, 0.0, 0.999_999).as_millis(), 1999);
        assert_eq!(backoff(3, base, cap, 0.0, 0.0), Duration::ZERO);
        assert!(backoff(2, base, cap, 1.0, 0.5) > backoff(2, base, cap, 0.0, 0.5));
        let a = random_unit();
        assert!((0.0..1.0).contains(&a));
    }
}
