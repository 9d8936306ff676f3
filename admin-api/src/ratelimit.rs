//! In-memory token-bucket rate limiting, keyed by caller (client address, API key id, client id).
//! Per replica by design: it blunts password guessing and runaway token loops without a shared store.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

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

#[cfg(test)]
mod tests {
    use super::*;

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
