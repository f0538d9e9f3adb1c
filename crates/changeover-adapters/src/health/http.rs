//! `http` health probe: one GET, judged by status and optionally body.

use changeover_core::health::HealthProbe;
use changeover_core::template::{Template, Vars};
use changeover_core::unit::Unit;
use std::time::Duration;

pub struct HttpProbe {
    url: Template,
    expect_status: u16,
    expect_body: Option<String>,
    timeout: Duration,
    /// Built once; kept as a `Result` so that a broken TLS setup shows up as
    /// a failed probe with a reason instead of a panic at startup.
    client: Result<reqwest::Client, String>,
}

impl HttpProbe {
    pub fn new(
        url: Template,
        expect_status: u16,
        expect_body: Option<String>,
        timeout: Duration,
    ) -> HttpProbe {
        let client = reqwest::Client::builder()
            // Health URLs point at private addresses; a proxy from the
            // operator's environment would probe the wrong thing.
            .no_proxy()
            // A redirect usually means a login page or a misrouted request,
            // not a healthy app: judge the first answer.
            .redirect(reqwest::redirect::Policy::none())
            // A pooled connection could reach the process that was just
            // replaced; every probe must see the app as it is now.
            .pool_max_idle_per_host(0)
            .timeout(timeout)
            .user_agent(concat!("changeover/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {}", error_chain(&e)));
        HttpProbe {
            url,
            expect_status,
            expect_body,
            timeout,
            client,
        }
    }

    fn url_for(&self, unit: &Unit) -> String {
        self.url.render(&Vars::for_unit(unit, "", "", ""))
    }

    fn describe_error(&self, err: &reqwest::Error) -> String {
        if err.is_timeout() {
            return format!("timed out after {}", format_duration(self.timeout));
        }
        if let Some(io) = io_source(err) {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".to_string(),
                std::io::ErrorKind::ConnectionReset => return "connection reset".to_string(),
                std::io::ErrorKind::TimedOut => {
                    return format!("timed out after {}", format_duration(self.timeout))
                }
                _ => {}
            }
        }
        if err.is_builder() {
            return format!("invalid URL: {}", error_chain(err));
        }
        error_chain(err)
    }
}

#[async_trait::async_trait]
impl HealthProbe for HttpProbe {
    async fn probe(&self, unit: &Unit) -> Result<(), String> {
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let url = self.url_for(unit);
        let response = client
            .get(&url)
            .send()
            .await
            .map_err(|e| self.describe_error(&e))?;
        let status = response.status().as_u16();
        if status != self.expect_status {
            return Err(format!("status {status} (expected {})", self.expect_status));
        }
        if let Some(expected) = &self.expect_body {
            let body = response.text().await.map_err(|e| self.describe_error(&e))?;
            if !body.contains(expected.as_str()) {
                return Err(format!("body does not contain {expected:?}"));
            }
        }
        Ok(())
    }

    fn describe(&self, unit: &Unit) -> String {
        self.url_for(unit)
    }
}

fn io_source<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = e.source();
    }
    None
}

/// reqwest's own Display hides the cause ("error sending request"); the
/// innermost messages are the useful part. Kept on one line.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ").replace('\n', " ")
}

/// `2s`, `1.5s`, `300ms`: short enough for a one-line reason.
pub(crate) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms >= 1000 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms >= 1000 {
        format!("{}s", d.as_secs_f64())
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::format_duration;
    use std::time::Duration;

    #[test]
    fn durations_read_short() {
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_millis(300)), "300ms");
    }
}
