//! Polling with a deadline instead of fixed sleeps: `eventually` retries a check until it holds and,
//! when time runs out, fails with what was expected and what the last attempt saw.
//! End-to-end behaviour is asynchronous (polls, flushes, restarts), so most assertions go through here.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long `eventually` waits between two attempts.
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// Runs `check` until it returns `Ok`, at most for `timeout`; returns the value and the time it took.
/// On timeout it panics with `expected` and the last `Err` message.
pub async fn eventually<T, F, Fut>(expected: &str, timeout: Duration, mut check: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        let last = match check().await {
            Ok(value) => return (value, started.elapsed()),
            Err(last) => last,
        };
        if started.elapsed() >= timeout {
            panic!("expected {expected} within {timeout:?}, but the last attempt saw: {last}");
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}
