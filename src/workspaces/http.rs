//! HTTP plumbing shared by the Workspaces and archive clients: timeouts, the bearer token, the
//! outbound rate limit, and how a failed call maps onto "retry later" or "stop".

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::time::Instant;

use super::settings::Endpoint;

/// Longest piece of a response body quoted in an error, so an HTML error page cannot flood
/// `backend_status`.
const MAX_BODY_CHARS: usize = 500;

/// Why a call failed: worth retrying later, or refused by the service.
#[derive(Debug)]
pub enum CallError {
    /// Timeouts, connection errors, 5xx, 408, 429 and unreadable answers.
    Transient(anyhow::Error),
    /// Any other 4xx: the same call will not work later. `message` quotes the body.
    Rejected { status: StatusCode, message: String },
}

/// One REST service: base URL, client with timeouts and token, and its rate limiter.
pub(crate) struct Http {
    client: reqwest::Client,
    base: Url,
    /// How errors name the service ("Workspaces", "the archive").
    service: &'static str,
    timeout: Duration,
    limiter: Arc<RateLimiter>,
}

impl Http {
    /// A client for the service at `endpoint`; calls share a limiter with every other client
    /// of the same URL in this process.
    pub(crate) fn new(service: &'static str, endpoint: &Endpoint) -> anyhow::Result<Self> {
        let url = endpoint.url.as_str();
        let base = Url::parse(url).with_context(|| format!("{service} URL {url} is not valid"))?;
        anyhow::ensure!(
            !base.cannot_be_a_base(),
            "{service} URL {url} cannot have paths appended"
        );
        let mut headers = HeaderMap::new();
        if let Some(token) = &endpoint.token {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| anyhow!("the {service} token is not valid in an HTTP header"))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let timeout = Duration::from_secs(endpoint.timeout_seconds);
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("thalamus/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            client,
            base,
            service,
            timeout,
            limiter: RateLimiter::shared(url, endpoint.requests_per_second),
        })
    }

    /// The base URL with `segments` appended, each percent-encoded as one path segment.
    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in Http::new")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// Sends one call and decodes a JSON answer.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<T, CallError> {
        let what = format!("{method} {url}");
        let bytes = self.send(method, url, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            CallError::Transient(anyhow!(
                "{} gave an unexpected answer to {what} ({e}): {}",
                self.service,
                trimmed(&String::from_utf8_lossy(&bytes))
            ))
        })
    }

    /// Sends one call, waiting for the rate limiter first; returns a 2xx answer's body.
    /// Counts it, and the wait, in the call metrics.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Vec<u8>, CallError> {
        let metrics = super::metrics::call_metrics();
        let service = self.service.trim_start_matches("the ").to_lowercase();
        let queued = Instant::now();
        self.limiter.acquire().await;
        metrics.waited(&service, queued.elapsed());
        let result = self.send_now(method, url, body).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(CallError::Rejected { .. }) => "rejected",
            Err(CallError::Transient(_)) => "transient",
        };
        metrics.called(&service, outcome);
        result
    }

    /// Sends one call now.
    async fn send_now(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Vec<u8>, CallError> {
        let what = format!("{method} {url}");
        let mut request = self.client.request(method, url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| CallError::Transient(self.transport_error(&what, &e)))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CallError::Transient(self.transport_error(&what, &e)))?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let text = trimmed(&String::from_utf8_lossy(&bytes));
        let message = if text.is_empty() {
            format!("{} answered {status} to {what}", self.service)
        } else {
            format!("{} answered {status} to {what}: {text}", self.service)
        };
        let retryable = matches!(
            status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
        );
        if status.is_client_error() && !retryable {
            Err(CallError::Rejected { status, message })
        } else {
            Err(CallError::Transient(anyhow!(message)))
        }
    }

    /// Says in plain words why a call got no answer.
    fn transport_error(&self, what: &str, e: &reqwest::Error) -> anyhow::Error {
        let service = self.service;
        if e.is_timeout() {
            anyhow!(
                "{service} did not answer {what} within {}s",
                self.timeout.as_secs()
            )
        } else if e.is_connect() {
            anyhow!("cannot connect to {service} for {what}: {}", root_cause(e))
        } else {
            anyhow!("{what} failed: {}", root_cause(e))
        }
    }
}

/// The innermost cause (e.g. "Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// `text` without surrounding white space, cut to [`MAX_BODY_CHARS`].
fn trimmed(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_BODY_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Spaces calls to at most `rate` per second, allowing a burst of one second's worth
/// (a GCRA token bucket: one timestamp, no background task).
pub(crate) struct RateLimiter {
    interval: Duration,
    /// How far ahead of its slot a call may go: the bucket's depth.
    burst: Duration,
    /// When the next call's slot begins (the "theoretical arrival time").
    next: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// A limiter for `rate` calls per second (positive; checked by settings validation).
    pub(crate) fn new(rate: f64) -> Self {
        let interval = Duration::from_secs_f64(1.0 / rate);
        let depth = rate.floor().max(1.0);
        Self {
            interval,
            burst: interval.mul_f64(depth - 1.0),
            next: Mutex::new(None),
        }
    }

    /// The limiter every client of `url` in this process shares, so the limit holds for the
    /// service however many steps call it.
    fn shared(url: &str, rate: f64) -> Arc<Self> {
        type Limiters = Mutex<HashMap<(String, u64), Arc<RateLimiter>>>;
        static SHARED: OnceLock<Limiters> = OnceLock::new();
        let mut all = SHARED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        all.entry((url.trim_end_matches('/').to_string(), rate.to_bits()))
            .or_insert_with(|| Arc::new(Self::new(rate)))
            .clone()
    }

    /// Waits until the next call may go out. A caller cancelled while waiting still uses its
    /// slot, which only errs on the side of calling less.
    pub(crate) async fn acquire(&self) {
        let wait_until = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.interval);
            slot.checked_sub(self.burst).filter(|at| *at > now)
        };
        if let Some(at) = wait_until {
            tokio::time::sleep_until(at).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_allows_a_burst_then_spaces_calls() {
        let limiter = RateLimiter::new(4.0);
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..10 {
            limiter.acquire().await;
            at.push((Instant::now() - start).as_millis());
        }
        // One second's worth (4) at once, then one every 250 ms.
        assert_eq!(at, [0, 0, 0, 0, 250, 500, 750, 1000, 1250, 1500]);
        // After a quiet spell the bucket refills, but never beyond its depth.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..6 {
            limiter.acquire().await;
            at.push((Instant::now() - start).as_millis());
        }
        assert_eq!(at, [0, 0, 0, 0, 250, 500]);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_rates_still_allow_one_call_at_once() {
        let limiter = RateLimiter::new(0.5);
        let start = Instant::now();
        limiter.acquire().await;
        limiter.acquire().await;
        assert_eq!((Instant::now() - start).as_millis(), 2000);
    }

    #[test]
    fn long_bodies_are_cut() {
        assert_eq!(trimmed("  short \n"), "short");
        let long = "x".repeat(MAX_BODY_CHARS + 10);
        assert_eq!(trimmed(&long).chars().count(), MAX_BODY_CHARS + 1);
    }
}
