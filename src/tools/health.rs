//! `ci-worker health`: one HTTP probe for container healthchecks. The image is distroless (no shell,
//! no curl), so a `HEALTHCHECK` or compose `healthcheck:` has nothing else to run. Exit 0 only when
//! the endpoint answers 2xx within the timeout; otherwise exit 1 with one line saying why (Docker
//! keeps the output in `docker inspect`'s health log).

use crate::config::Settings;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

/// The longest answer body quoted in the one line printed.
const BODY_QUOTE_CHARS: usize = 200;

#[derive(Debug, Clone, clap::Args)]
pub struct HealthOptions {
    /// URL to probe. Default: the worker's `/readyz` on `http.listen` (an unspecified address such
    /// as 0.0.0.0 is probed on loopback). The emulator's is `http://127.0.0.1:9000/healthz`.
    #[arg(long)]
    pub url: Option<String>,
    /// Give up after this long without an answer (e.g. `2s`, `500ms`).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("{url}: no answer within {}", humantime::format_duration(*timeout))]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered {status}: {body}")]
    NotReady {
        url: String,
        status: u16,
        body: String,
    },
}

/// The URL probed when none is given: `/readyz` of `http.listen`, on loopback when it binds every
/// address (a container's healthcheck runs inside the container).
pub fn default_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/readyz", SocketAddr::new(ip, listen.port()))
}

/// One GET of `url`; `Ok` with the status and the first line of the body when it is 2xx.
pub async fn probe(url: &str, timeout: Duration) -> Result<(u16, String), HealthError> {
    let unreachable = |reason: String| HealthError::Unreachable {
        url: url.to_string(),
        reason,
    };
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| unreachable(root_cause(&e)))?;
    let response = client.get(url).send().await.map_err(|e| {
        if e.is_timeout() {
            HealthError::Timeout {
                url: url.to_string(),
                timeout,
            }
        } else {
            unreachable(root_cause(&e))
        }
    })?;
    let status = response.status();
    // The body is the reason a probe gives; a body that does not arrive in time is no reason to
    // call a 2xx unhealthy.
    let body = first_line(&response.text().await.unwrap_or_default());
    if status.is_success() {
        Ok((status.as_u16(), body))
    } else {
        Err(HealthError::NotReady {
            url: url.to_string(),
            status: status.as_u16(),
            body,
        })
    }
}

/// `ci-worker health`: probes, prints one line (stdout when ready, stderr otherwise) and returns
/// the exit code Docker's healthcheck reads (0 healthy, 1 unhealthy).
pub fn run(settings: &Settings, options: &HealthOptions) -> ExitCode {
    let url = match &options.url {
        Some(url) => url.clone(),
        None => default_url(settings.http.listen),
    };
    // One request: a runtime of one thread is all it needs, and starts quickest.
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HealthError::Unreachable {
            url: url.clone(),
            reason: format!("cannot start the async runtime: {e}"),
        })
        .and_then(|runtime| runtime.block_on(probe(&url, options.timeout)))
        .map(|answer| (url, answer));
    match outcome {
        Ok((url, (status, body))) => {
            println!("{url} answered {status}: {body}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ci-worker health: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The innermost error of a chain ("Connection refused (os error 111)"), which says more than
/// reqwest's own outer message.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn first_line(body: &str) -> String {
    let line = body.lines().next().unwrap_or("").trim();
    match line.char_indices().nth(BODY_QUOTE_CHARS) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_url_probes_loopback_for_an_unspecified_address() {
        let url = |listen: &str| default_url(listen.parse().unwrap());
        assert_eq!(url("0.0.0.0:9464"), "http://127.0.0.1:9464/readyz");
        assert_eq!(url("[::]:9464"), "http://[::1]:9464/readyz");
        assert_eq!(url("10.1.2.3:8000"), "http://10.1.2.3:8000/readyz");
    }

    #[test]
    fn first_line_quotes_one_short_line() {
        assert_eq!(first_line("not ready: x\nmore"), "not ready: x");
        let long = "é".repeat(BODY_QUOTE_CHARS + 5);
        assert_eq!(first_line(&long).chars().count(), BODY_QUOTE_CHARS + 1);
    }
}
