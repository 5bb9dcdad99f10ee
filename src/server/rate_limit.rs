//! Per-client rate limiting (`--rate-limit R/s,BURST`): one token bucket per client IP address.
//!
//! A bucket holds at most BURST tokens and refills at R tokens per second; a request takes one token, or is answered
//! 429 with a `Retry-After` header (whole seconds until a token is back). The clock is passed in, so the arithmetic
//! is tested without sleeping. The client is the TCP peer: behind a proxy that is the proxy, so limit there or not
//! at all. The table of buckets is bounded: full buckets (clients idle long enough to refill) are forgotten first.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use thiserror::Error;

use super::{error, AppState};

/// Most clients tracked at once; beyond it, new clients are refused until idle ones are forgotten.
const MAX_CLIENTS: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second (R).
    pub per_second: f64,
    /// Bucket size: requests a client may make at once after being idle (BURST).
    pub burst: u32,
}

#[derive(Debug, Error, PartialEq)]
#[error("rate limit `{0}` must look like R/s or R/s,BURST with R > 0 and BURST >= 1, e.g. 5/s,10")]
pub struct RateLimitError(String);

impl FromStr for RateLimit {
    type Err = RateLimitError;

    /// `R/s` (burst = R rounded up) or `R/s,BURST`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RateLimitError(s.chars().take(40).collect());
        let (rate, burst) = match s.split_once(',') {
            Some((rate, burst)) => (rate, Some(burst.trim())),
            None => (s, None),
        };
        let per_second: f64 = rate
            .trim()
            .strip_suffix("/s")
            .and_then(|r| r.trim().parse().ok())
            .ok_or_else(bad)?;
        if !(per_second.is_finite() && per_second > 0.0) {
            return Err(bad());
        }
        let burst = match burst {
            Some(b) => b.parse::<u32>().map_err(|_| bad())?,
            None => per_second.ceil().min(u32::MAX as f64) as u32,
        };
        if burst == 0 {
            return Err(bad());
        }
        Ok(Self { per_second, burst })
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(limit: &RateLimit, now: Instant) -> Self {
        Self {
            tokens: limit.burst as f64,
            updated: now,
        }
    }

    fn refill(&mut self, limit: &RateLimit, now: Instant) {
        // tokens <- min(BURST, tokens + R * (now - updated))
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + limit.per_second * elapsed).min(limit.burst as f64);
        self.updated = self.updated.max(now);
    }

    /// Takes one token at `now`, or says how long until one is back.
    fn take(&mut self, limit: &RateLimit, now: Instant) -> Result<(), Duration> {
        self.refill(limit, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            // wait = (1 - tokens) / R
            Err(Duration::from_secs_f64((1.0 - self.tokens) / limit.per_second))
        }
    }
}

pub struct Limiter {
    limit: RateLimit,
    clients: Mutex<HashMap<IpAddr, Bucket>>,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// One request from `client` at `now`: Ok, or the wait before it would be allowed.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let limit = &self.limit;
        let mut clients = self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !clients.contains_key(&client) && clients.len() >= MAX_CLIENTS {
            clients.retain(|_, bucket| {
                bucket.refill(limit, now);
                bucket.tokens < limit.burst as f64
            });
            if clients.len() >= MAX_CLIENTS {
                return Err(Duration::from_secs(1));
            }
        }
        clients
            .entry(client)
            .or_insert_with(|| Bucket::full(limit, now))
            .take(limit, now)
    }
}

/// Middleware: 429 with `Retry-After` for a client over its rate; a no-op without `--rate-limit`.
pub async fn limit(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let Some(limiter) = &state.limiter else {
        return next.run(request).await;
    };
    match limiter.check(peer.ip(), Instant::now()) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                format!("rate limit exceeded: retry in {seconds} s"),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn parses_rate_and_burst() {
        assert_eq!(
            "5/s,10".parse(),
            Ok(RateLimit {
                per_second: 5.0,
                burst: 10
            })
        );
        assert_eq!(
            "0.5/s".parse(),
            Ok(RateLimit {
                per_second: 0.5,
                burst: 1
            })
        );
        for bad in [
            "", "5", "5/m", "0/s", "-1/s", "nan/s", "inf/s", "5/s,0", "5/s,x", "5/s,-1",
        ] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_burst_then_one_token_per_interval() {
        // 2 tokens/s, burst 3: three requests at once pass, the fourth waits (1 - 0) / 2 = 0.5 s.
        let limiter = Limiter::new("2/s,3".parse().expect("limit"));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check(A, t0), Ok(()));
        }
        assert_eq!(limiter.check(A, t0), Err(Duration::from_millis(500)));
        // Another client has its own bucket.
        assert_eq!(limiter.check(B, t0), Ok(()));
        // After 0.25 s half a token is back: still 0.25 s to wait.
        assert_eq!(
            limiter.check(A, t0 + Duration::from_millis(250)),
            Err(Duration::from_millis(250))
        );
        assert_eq!(limiter.check(A, t0 + Duration::from_millis(500)), Ok(()));
        // Idle for a minute: the bucket is full again, but never fuller than the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(limiter.check(A, later), Ok(()));
        }
        assert!(limiter.check(A, later).is_err());
    }

    #[test]
    fn a_clock_that_steps_back_adds_nothing() {
        let limiter = Limiter::new("1/s,1".parse().expect("limit"));
        let t0 = Instant::now() + Duration::from_secs(10);
        assert_eq!(limiter.check(A, t0), Ok(()));
        assert!(limiter.check(A, t0 - Duration::from_secs(5)).is_err());
        assert!(limiter.check(A, t0).is_err());
    }
}
