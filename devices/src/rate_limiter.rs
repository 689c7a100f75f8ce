//! Token-bucket rate limiting of the I/O a guest drives through a device (virtio-blk requests,
//! virtio-net frames), in the model Firecracker's users know: a limiter has up to two buckets,
//! one of bytes (`bandwidth`) and one of operations (`ops`); each holds `size` tokens, refilled
//! from empty to full over `refill_time_ms`, plus a `one_time_burst` spent first and never
//! refilled. A request takes one operation and its bytes from both buckets or from neither.
//!
//! When a bucket is short the device stops taking requests from that queue (they stay on the
//! avail ring, so the guest's driver sees a slow device, not an error) and arms the limiter's
//! timer for the moment the bucket will have the tokens; the event loop wakes on it
//! ([`RateLimiter::timer_fd`]) and the device goes on. A request larger than a bucket
//! passes when that bucket is full and leaves a debt that the refill pays first, so the
//! average rate holds for any request size.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmm_sys_util::timerfd::TimerFd;

/// Longest refill time a bucket may have (one hour).
pub const MAX_REFILL_TIME_MS: u64 = 3_600_000;

/// One bucket: `size` tokens (bytes or operations) per `refill_time_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// Tokens the bucket holds when full; also how many it gains per `refill_time_ms`.
    pub size: u64,
    /// Tokens spent before the bucket's own, once (a boot's burst of reads, say).
    #[serde(default)]
    pub one_time_burst: u64,
    /// Milliseconds to refill the bucket from empty to full.
    pub refill_time_ms: u64,
}

/// A device's rate limit: either bucket may be left out (no limit of that kind).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<BucketConfig>,
    /// Operations (requests, frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<BucketConfig>,
}

/// A rate limit that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("{bucket} bucket: size must be at least 1 token")]
    Size { bucket: &'static str },
    #[error("{bucket} bucket: refill_time_ms must be 1 to {MAX_REFILL_TIME_MS}, not {ms}")]
    RefillTime { bucket: &'static str, ms: u64 },
}

impl RateLimit {
    /// Whether it limits anything.
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }

    /// Refuses a bucket of size 0 or with a refill time of 0 or more than an hour.
    pub fn validate(&self) -> Result<(), LimitError> {
        for (bucket, b) in [("bandwidth", &self.bandwidth), ("ops", &self.ops)] {
            let Some(b) = b else { continue };
            if b.size == 0 {
                return Err(LimitError::Size { bucket });
            }
            if !(1..=MAX_REFILL_TIME_MS).contains(&b.refill_time_ms) {
                return Err(LimitError::RefillTime {
                    bucket,
                    ms: b.refill_time_ms,
                });
            }
        }
        Ok(())
    }
}

/// The state of one bucket.
#[derive(Debug)]
struct Bucket {
    size: u64,
    refill_ns: u128,
    budget: u64,
    burst: u64,
    /// Tokens taken beyond an empty bucket by one request larger than the bucket.
    debt: u64,
    /// Up to when the refill has been counted.
    last: Instant,
}

impl Bucket {
    fn new(c: &BucketConfig, now: Instant) -> Bucket {
        Bucket {
            size: c.size,
            refill_ns: u128::from(c.refill_time_ms) * 1_000_000,
            budget: c.size,
            burst: c.one_time_burst,
            debt: 0,
            last: now,
        }
    }

    /// Adds what accrued since `last`: the debt is paid first, the budget is capped at
    /// `size`. Only the time that earned whole tokens is counted as spent, so frequent calls
    /// lose no rate.
    fn refill(&mut self, now: Instant) {
        if self.debt == 0 && self.budget == self.size {
            self.last = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let earned = elapsed * u128::from(self.size) / self.refill_ns;
        if earned == 0 {
            return;
        }
        let used_ns = earned * self.refill_ns / u128::from(self.size);
        self.last += Duration::from_nanos(u64::try_from(used_ns).unwrap_or(u64::MAX));
        let mut earned = u64::try_from(earned).unwrap_or(u64::MAX);
        let paid = earned.min(self.debt);
        self.debt -= paid;
        earned -= paid;
        self.budget = self.budget.saturating_add(earned).min(self.size);
        if self.debt == 0 && self.budget == self.size {
            self.last = now;
        }
    }

    /// Whether `n` tokens can be taken now (after [`Bucket::refill`]).
    fn can_take(&self, n: u64) -> bool {
        self.debt == 0
            && (n <= self.burst.saturating_add(self.budget)
                // Larger than the bucket: passes from a full one, leaving a debt.
                || (n > self.size && self.budget == self.size))
    }

    /// Takes `n` tokens ([`Bucket::can_take`] said yes): burst first, then the budget, then
    /// a debt.
    fn take(&mut self, n: u64) {
        let from_burst = n.min(self.burst);
        self.burst -= from_burst;
        let rest = n - from_burst;
        let from_budget = rest.min(self.budget);
        self.budget -= from_budget;
        self.debt += rest - from_budget;
    }

    /// How long until `n` tokens can be taken (at least 1 ms: the timer's granularity
    /// should not make the device spin).
    fn wait_for(&self, n: u64) -> Duration {
        let want = n.min(self.size);
        let missing = u128::from(self.debt) + u128::from(want.saturating_sub(self.budget));
        let ns = missing * self.refill_ns / u128::from(self.size);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)).max(Duration::from_millis(1))
    }
}

/// A device's limiter: the buckets, the timer that says when a blocked device may go on, and
/// counters.
pub struct RateLimiter {
    bandwidth: Option<Bucket>,
    ops: Option<Bucket>,
    timer: TimerFd,
    blocked: bool,
    throttled: u64,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("bandwidth", &self.bandwidth)
            .field("ops", &self.ops)
            .field("blocked", &self.blocked)
            .field("throttled", &self.throttled)
            .finish()
    }
}

impl RateLimiter {
    /// A limiter for `limit` (validated here), `None` when it limits nothing.
    pub fn new(limit: &RateLimit) -> io::Result<Option<RateLimiter>> {
        if let Err(e) = limit.validate() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, e));
        }
        if limit.is_unlimited() {
            return Ok(None);
        }
        let now = Instant::now();
        Ok(Some(RateLimiter {
            bandwidth: limit.bandwidth.as_ref().map(|b| Bucket::new(b, now)),
            ops: limit.ops.as_ref().map(|b| Bucket::new(b, now)),
            timer: TimerFd::new()?,
            blocked: false,
            throttled: 0,
        }))
    }

    /// Takes one operation and `bytes` bytes, from both buckets or from neither. When either
    /// is short the limiter is blocked until its timer fires: this and every later call
    /// return false until [`RateLimiter::on_timer`].
    pub fn consume(&mut self, bytes: u64) -> bool {
        if self.blocked {
            return false;
        }
        let now = Instant::now();
        let mut wait = Duration::ZERO;
        for (bucket, n) in [(&mut self.ops, 1), (&mut self.bandwidth, bytes)] {
            if let Some(b) = bucket {
                b.refill(now);
                if !b.can_take(n) {
                    wait = wait.max(b.wait_for(n));
                }
            }
        }
        if wait.is_zero() {
            for (bucket, n) in [(&mut self.ops, 1), (&mut self.bandwidth, bytes)] {
                if let Some(b) = bucket {
                    b.take(n);
                }
            }
            return true;
        }
        self.throttled += 1;
        match self.timer.reset(wait, None) {
            Ok(()) => self.blocked = true,
            // Without a timer nothing would wake the device: let this one pass instead.
            Err(e) => {
                log::error!("rate limiter: cannot arm its timer: {e}; request let through");
                return true;
            }
        }
        false
    }

    /// Whether the device must wait for the timer.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// How many times a request found a bucket short (calls while blocked not counted).
    pub fn throttled(&self) -> u64 {
        self.throttled
    }

    /// The timer's fd, for the event loop (readable when a blocked device may go on).
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// The timer fired: the device may take requests again. Returns whether it was blocked.
    pub fn on_timer(&mut self) -> bool {
        // Readable (the event loop said so): the read does not block.
        if let Err(e) = self.timer.wait() {
            log::warn!("rate limiter: reading its timer: {e}");
        }
        std::mem::replace(&mut self.blocked, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, ms: u64) -> Option<BucketConfig> {
        Some(BucketConfig {
            size,
            one_time_burst: 0,
            refill_time_ms: ms,
        })
    }

    #[test]
    fn an_unlimited_limit_makes_no_limiter_and_a_bad_one_is_refused() {
        assert!(RateLimiter::new(&RateLimit::default()).unwrap().is_none());
        let zero = RateLimit {
            bandwidth: bucket(0, 100),
            ops: None,
        };
        assert_eq!(
            zero.validate(),
            Err(LimitError::Size {
                bucket: "bandwidth"
            })
        );
        let err = RateLimiter::new(&zero).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        for ms in [0, MAX_REFILL_TIME_MS + 1] {
            let bad = RateLimit {
                bandwidth: None,
                ops: bucket(10, ms),
            };
            assert_eq!(
                bad.validate(),
                Err(LimitError::RefillTime { bucket: "ops", ms })
            );
        }
    }

    #[test]
    fn a_bucket_refills_at_its_rate_without_losing_fractions() {
        let t0 = Instant::now();
        let mut b = Bucket::new(&bucket(100, 1000).unwrap(), t0);
        b.take(100);
        assert!(!b.can_take(1));
        // 10 ms per token; 25 steps of 4 ms are 100 ms: 10 tokens, whatever the steps.
        for i in 1..=25 {
            b.refill(t0 + Duration::from_millis(4 * i));
        }
        assert_eq!(b.budget, 10);
        assert_eq!(b.wait_for(20), Duration::from_millis(100));
        // Capped at its size.
        b.refill(t0 + Duration::from_secs(60));
        assert_eq!(b.budget, 100);
    }

    #[test]
    fn the_burst_goes_first_and_is_not_refilled() {
        let t0 = Instant::now();
        let mut b = Bucket::new(
            &BucketConfig {
                size: 10,
                one_time_burst: 50,
                refill_time_ms: 100,
            },
            t0,
        );
        assert!(b.can_take(60));
        b.take(55);
        assert_eq!((b.burst, b.budget), (0, 5));
        b.refill(t0 + Duration::from_secs(10));
        assert_eq!((b.burst, b.budget), (0, 10));
        b.take(10);
        assert!(!b.can_take(1));
    }

    #[test]
    fn a_request_larger_than_the_bucket_passes_from_a_full_one_and_pays_its_debt() {
        let t0 = Instant::now();
        let mut b = Bucket::new(&bucket(100, 1000).unwrap(), t0);
        assert!(b.can_take(250));
        b.take(250);
        assert_eq!((b.budget, b.debt), (0, 150));
        assert!(!b.can_take(1));
        // 150 tokens of debt and one more: 1.51 s.
        assert_eq!(b.wait_for(1), Duration::from_millis(1510));
        b.refill(t0 + Duration::from_millis(1500));
        assert_eq!((b.budget, b.debt), (0, 0));
        b.refill(t0 + Duration::from_millis(1510));
        assert!(b.can_take(1));
    }

    #[test]
    fn a_limiter_takes_from_both_buckets_or_neither_and_blocks_until_its_timer() {
        let limit = RateLimit {
            bandwidth: bucket(1000, 1000),
            ops: bucket(2, 20),
        };
        let mut l = RateLimiter::new(&limit).unwrap().unwrap();
        assert!(l.consume(600));
        // 600 more bytes do not fit: no operation is taken either.
        assert!(!l.consume(600));
        assert!(l.is_blocked());
        assert_eq!(l.ops.as_ref().unwrap().budget, 1);
        assert_eq!(l.bandwidth.as_ref().unwrap().budget, 400);
        // Blocked: even a request that would fit waits for the timer.
        assert!(!l.consume(1));
        assert_eq!(l.throttled(), 1);
        // The timer fires after ~200 ms (200 bytes at 1000 bytes/s).
        let mut fds = [libc::pollfd {
            fd: l.timer_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let t = Instant::now();
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 5000) };
        assert_eq!(n, 1);
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        assert!(l.on_timer());
        assert!(!l.is_blocked());
        assert!(l.consume(600));
    }
}
