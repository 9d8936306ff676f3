//! In-memory admission control, per replica by design (no shared store; each replica keeps its own):
//! token buckets keyed by caller (client address, API key id, client id) that blunt password guessing
//! and runaway token loops; [`PasswordGate`], a bound on concurrent argon2 computations, so a burst of
//! logins cannot take memory and every core; and [`AccountLockout`], a back-off per account after
//! repeated failed logins, whichever address they come from.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::RateLimit;
use crate::error::ApiError;

/// Buckets are dropped once this many keys are tracked, so a flood of distinct keys cannot grow memory.
const MAX_KEYS: usize = 100_000;

/// A set of token buckets of one shape.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter where each key gets `limit.burst` requests at once, refilled at `limit.per_second`.
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`, or answers 429 with the seconds until one is available.
    pub fn check(&self, key: &str) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let burst = f64::from(self.limit.burst);
            let per_second = self.limit.per_second;
            // Forget buckets that have refilled completely: they carry no information.
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_second < burst
            });
            if buckets.len() >= MAX_KEYS {
                buckets.clear();
            }
        }
        let burst = f64::from(self.limit.burst);
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((burst, now));
        let refilled =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.limit.per_second).min(burst);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            let wait = if self.limit.per_second > 0.0 {
                (1.0 - refilled) / self.limit.per_second
            } else {
                3600.0
            };
            Err(ApiError::RateLimited {
                retry_after: wait.ceil().max(1.0) as u64,
            })
        }
    }
}

/// Bounds the password hash computations running at once (each argon2id costs its memory parameter,
/// 19 MiB by default, for its whole run). A caller waits up to `wait` for a slot, then is refused with
/// 429 and `Retry-After`.
#[derive(Debug)]
pub struct PasswordGate {
    slots: Arc<tokio::sync::Semaphore>,
    wait: Duration,
    /// Computations running now, and the most that ever ran at once.
    counters: Arc<(AtomicUsize, AtomicUsize)>,
}

impl PasswordGate {
    /// A gate letting `concurrency` computations run at once (at least one).
    pub fn new(concurrency: usize, wait: Duration) -> PasswordGate {
        PasswordGate {
            slots: Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))),
            wait,
            counters: Arc::new((AtomicUsize::new(0), AtomicUsize::new(0))),
        }
    }

    /// Runs `compute` on the blocking pool once a slot is free, or answers 429 when none frees up in time.
    pub async fn run<T: Send + 'static>(
        &self,
        compute: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await
        {
            Ok(Ok(permit)) => permit,
            _ => return Err(ApiError::RateLimited { retry_after: 1 }),
        };
        // Counted inside the blocking task, so the gauge measures computations, not waiting requests; the
        // slot moves there too, so a caller that goes away does not free it before the hash is done.
        let counters = self.counters.clone();
        let result = tokio::task::spawn_blocking(move || {
            let (running, high_water) = &*counters;
            let now = running.fetch_add(1, Ordering::AcqRel) + 1;
            high_water.fetch_max(now, Ordering::AcqRel);
            let result = compute();
            running.fetch_sub(1, Ordering::AcqRel);
            drop(permit);
            result
        })
        .await;
        result.map_err(|e| ApiError::Internal(e.into()))
    }

    /// The most computations that have run at once since the start.
    pub fn high_water(&self) -> usize {
        self.counters.1.load(Ordering::Acquire)
    }
}

/// Refuses logins to an account for a while after `failures` wrong passwords in a row: `base` after
/// the `failures`th, doubling with each further one up to `max`. Any address counts, so guesses spread
/// over many addresses are slowed as much as guesses from one; a correct password resets the count.
#[derive(Debug)]
pub struct AccountLockout {
    failures: u32,
    base: Duration,
    max: Duration,
    accounts: Mutex<HashMap<String, (u32, Option<Instant>)>>,
}

impl AccountLockout {
    /// A lockout after `failures` wrong passwords (0 disables it) for `base`, doubling up to `max`.
    pub fn new(failures: u32, base: Duration, max: Duration) -> AccountLockout {
        AccountLockout {
            failures,
            base,
            max,
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// 429 with the seconds left while `account` is locked.
    pub fn check(&self, account: &str) -> Result<(), ApiError> {
        let accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        match accounts.get(&key(account)) {
            Some((_, Some(until))) if *until > Instant::now() => Err(ApiError::RateLimited {
                retry_after: until
                    .duration_since(Instant::now())
                    .as_secs_f64()
                    .ceil()
                    .max(1.0) as u64,
            }),
            _ => Ok(()),
        }
    }

    /// Counts a wrong password for `account`, locking it once the count reaches the threshold.
    /// True when this failure locked an account that was not locked (for the log and the event).
    pub fn failed(&self, account: &str) -> bool {
        if self.failures == 0 {
            return false;
        }
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        if accounts.len() >= MAX_KEYS {
            // Unknown usernames count too (not to reveal which exist): forget all but locked accounts.
            let now = Instant::now();
            accounts.retain(|_, (_, until)| until.is_some_and(|u| u > now));
            if accounts.len() >= MAX_KEYS {
                accounts.clear();
            }
        }
        let (count, until) = accounts.entry(key(account)).or_insert((0, None));
        *count = count.saturating_add(1);
        if *count >= self.failures {
            let was_locked = until.is_some_and(|u| u > Instant::now());
            let doublings = (*count - self.failures).min(20);
            let lock = self.base.saturating_mul(1 << doublings).min(self.max);
            *until = Some(Instant::now() + lock);
            return !was_locked;
        }
        false
    }

    /// Forgets the failures of `account` after a correct password.
    pub fn succeeded(&self, account: &str) {
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        accounts.remove(&key(account));
    }
}

/// Lets one thing through per key and interval: how often a refused login or a bad API key from one
/// address leaves a log line and an event, so a flood of them cannot flood the log or the events table.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl Throttle {
    /// At most one per key and `every`.
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// True when nothing passed for `key` within the interval (and notes that something passes now).
    pub fn allow(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.len() >= MAX_KEYS && !last.contains_key(key) {
            last.retain(|_, at| now.duration_since(*at) < self.every);
            if last.len() >= MAX_KEYS {
                last.clear();
            }
        }
        match last.get(key) {
            Some(at) if now.duration_since(*at) < self.every => false,
            _ => {
                last.insert(key.to_owned(), now);
                true
            }
        }
    }
}

/// Accounts are keyed by name, hashed when long so a huge username cannot grow memory.
fn key(account: &str) -> String {
    if account.len() <= 128 {
        account.to_owned()
    } else {
        crate::secrets::sha256_hex(account)
    }
}

#[cfg(test)]
mod throttle_tests {
    use super::Throttle;
    use std::time::Duration;

    #[test]
    fn throttle_lets_one_through_per_key_and_interval() {
        let throttle = Throttle::new(Duration::from_millis(200));
        assert!(throttle.allow("10.0.0.1"));
        assert!(!throttle.allow("10.0.0.1"));
        assert!(throttle.allow("10.0.0.2"));
        std::thread::sleep(Duration::from_millis(250));
        assert!(throttle.allow("10.0.0.1"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn password_gate_refuses_with_retry_after_when_no_slot_frees_up() {
        let gate = std::sync::Arc::new(PasswordGate::new(1, Duration::from_millis(100)));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let holder = {
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.run(move || {
                    let _ = started_tx.send(());
                    let _ = hold.recv();
                })
                .await
            })
        };
        started.await.unwrap();
        match gate.run(|| ()).await {
            Err(ApiError::RateLimited { retry_after }) => assert_eq!(retry_after, 1),
            other => panic!("expected a refusal, got {other:?}"),
        }
        release.send(()).unwrap();
        holder.await.unwrap().unwrap();
        gate.run(|| ()).await.unwrap();
        assert_eq!(gate.high_water(), 1);
    }

    #[test]
    fn lockout_doubles_after_the_threshold_and_resets_on_success() {
        let lockout = AccountLockout::new(3, Duration::from_secs(60), Duration::from_secs(200));
        for _ in 0..2 {
            lockout.failed("alice");
            lockout.check("alice").unwrap();
        }
        lockout.failed("alice");
        match lockout.check("alice") {
            Err(ApiError::RateLimited { retry_after }) => assert!((59..=60).contains(&retry_after)),
            other => panic!("expected a lockout, got {other:?}"),
        }
        lockout.failed("alice");
        lockout.failed("alice");
        match lockout.check("alice") {
            Err(ApiError::RateLimited { retry_after }) => {
                assert!((199..=200).contains(&retry_after))
            }
            other => panic!("expected a capped lockout, got {other:?}"),
        }
        lockout.check("bob").unwrap();
        lockout.succeeded("alice");
        lockout.check("alice").unwrap();
    }

    #[test]
    fn bucket_allows_burst_then_refuses_with_retry_after() {
        let limiter = RateLimiter::new(RateLimit {
            burst: 3,
            per_second: 0.5,
        });
        for _ in 0..3 {
            limiter.check("a").unwrap();
        }
        match limiter.check("a") {
            Err(ApiError::RateLimited { retry_after }) => assert_eq!(retry_after, 2),
            other => panic!("expected rate limit, got {other:?}"),
        }
        // Another key has its own bucket.
        limiter.check("b").unwrap();
    }
}
