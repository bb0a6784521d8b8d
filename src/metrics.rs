//! Prometheus metrics (`GET /metrics`). Each capability registers its own families here so the
//! whole set is visible in one place.

use std::{borrow::Cow, sync::Arc};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: Cow<'static, str>,
    pub route: Cow<'static, str>,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: Cow<'static, str>,
    pub route: Cow<'static, str>,
}

/// The outcome of one webhook delivery attempt: `succeeded`, `retrying` (failed, another attempt
/// is scheduled), `failed` (failed, no attempt follows: the schedule or a manual retry ended).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookOutcomeLabels {
    pub outcome: &'static str,
}

/// Why a request was refused with 429: `key`, `user`, `organization`, `endpoint`, `ip`, `quota`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs … ~26 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 18,
    ))
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_latency: HistogramFamily<RouteLabels>,
    pub webhook_deliveries: Family<WebhookOutcomeLabels, Counter>,
    pub webhook_pending: Gauge,
    pub webhook_endpoints_disabled: Counter,
    pub gateway: GatewayMetrics,
    pub rate_limit_refusals: Family<RefusalLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayLabels {
    pub provider: Cow<'static, str>,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub provider: Cow<'static, str>,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: Cow<'static, str>,
}

/// A provider kind as a label value.
pub fn provider_label(kind: crate::gateway::providers::ProviderKind) -> Cow<'static, str> {
    Cow::Borrowed(kind.as_str())
}

/// The gateway's metrics (cheap clones sharing the same series).
#[derive(Clone)]
pub struct GatewayMetrics {
    pub requests: Family<GatewayLabels, Counter>,
    pub latency: HistogramFamily<ProviderLabels>,
    pub tokens: Family<TokenLabels, Counter>,
    pub upstream_errors: Family<ProviderLabels, Counter>,
    pub usage_queue_depth: Gauge,
    pub usage_dropped: Counter,
    /// Each provider kind's series of a successful answer, looked up once (see
    /// [`GatewayMetrics::answered`]).
    series: Arc<[std::sync::OnceLock<ProviderSeries>]>,
}

/// The series one answer of a provider with one status updates (clones of the families'
/// series: updating them updates the families).
struct ProviderSeries {
    requests: Counter,
    latency: Histogram,
    prompt_tokens: Counter,
    completion_tokens: Counter,
}

impl GatewayMetrics {
    /// Counts an answer of `provider` (a `providers::ProviderKind`, as its name) with its status, latency and
    /// tokens. A 200 updates series held since their first use, without the families' lookups
    /// (the gateway's request path); other statuses look theirs up.
    pub fn answered(&self, provider: &'static str, status: u16, secs: f64, tokens: (u64, u64)) {
        let kind = crate::gateway::providers::ProviderKind::ALL
            .iter()
            .position(|k| k.as_str() == provider);
        let looked_up;
        let series = match kind {
            Some(i) if status == 200 => {
                self.series[i].get_or_init(|| self.series_of(provider, 200))
            }
            _ => {
                looked_up = self.series_of(provider, status);
                &looked_up
            }
        };
        series.requests.inc();
        series.latency.observe(secs);
        series.prompt_tokens.inc_by(tokens.0);
        series.completion_tokens.inc_by(tokens.1);
    }

    fn series_of(&self, provider: &'static str, status: u16) -> ProviderSeries {
        let provider = Cow::Borrowed(provider);
        let tokens = |kind| {
            self.tokens
                .get_or_create(&TokenLabels {
                    provider: provider.clone(),
                    kind,
                })
                .clone()
        };
        ProviderSeries {
            requests: self
                .requests
                .get_or_create(&GatewayLabels {
                    provider: provider.clone(),
                    status,
                })
                .clone(),
            latency: self
                .latency
                .get_or_create(&ProviderLabels {
                    provider: provider.clone(),
                })
                .clone(),
            prompt_tokens: tokens("prompt"),
            completion_tokens: tokens("completion"),
        }
    }
}

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayMetrics")
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers each metric of `$metrics` (a field path) under its name and help text, and yields
/// `$metrics`: one table of every metric the server exposes.
macro_rules! register_all {
    ($metrics:ident; $($name:literal => $($field:ident).+, $help:literal;)*) => {{
        let mut m = $metrics;
        $( m.registry.register($name, $help, m.$($field).+.clone()); )*
        m
    }};
}

impl Metrics {
    pub fn new() -> Self {
        let gateway = GatewayMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            tokens: Family::default(),
            upstream_errors: Family::default(),
            usage_queue_depth: Gauge::default(),
            usage_dropped: Counter::default(),
            series: crate::gateway::providers::ProviderKind::ALL
                .iter()
                .map(|_| std::sync::OnceLock::new())
                .collect(),
        };
        let metrics = Metrics {
            gateway,
            registry: Registry::with_prefix("gatehouse"),
            rate_limit_refusals: Family::default(),
            http_requests: Family::default(),
            http_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            webhook_deliveries: Family::default(),
            webhook_pending: Gauge::default(),
            webhook_endpoints_disabled: Counter::default(),
        };
        register_all!(metrics;
            "http_requests" => http_requests,
                "HTTP requests answered, by method, route template and status";
            "http_request_duration_seconds" => http_latency,
                "Time to answer an HTTP request (until the response head), by route template";
            "webhook_deliveries" => webhook_deliveries,
                "Webhook delivery attempts made, by outcome (succeeded, retrying, failed)";
            "webhook_deliveries_pending" => webhook_pending,
                "Webhook delivery attempts queued or in flight (the delivery queue depth)";
            "webhook_endpoints_disabled" => webhook_endpoints_disabled,
                "Webhook endpoints disabled after failing continuously";
            "gateway_requests" => gateway.requests,
                "Gateway requests answered, by provider and status";
            "gateway_request_duration_seconds" => gateway.latency,
                "Gateway request duration until the last byte, by provider";
            "gateway_tokens" => gateway.tokens,
                "Tokens through the gateway, by provider and kind (prompt|completion)";
            "gateway_upstream_errors" => gateway.upstream_errors,
                "Provider connection failures and timeouts, by provider";
            "gateway_usage_queue_depth" => gateway.usage_queue_depth,
                "Usage-log records waiting to be written";
            "gateway_usage_dropped" => gateway.usage_dropped,
                "Usage-log records dropped because the queue was full";
            "rate_limit_refusals" => rate_limit_refusals,
                "Requests refused with 429, by reason (key, user, organization, endpoint, ip, quota)";
        )
    }

    /// The registry for capabilities to register their own metrics at start.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The metrics in the OpenMetrics text format (`application/openmetrics-text`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The metrics in the format `format` names.
    pub fn render_as(&self, format: ExpositionFormat) -> String {
        match format {
            ExpositionFormat::OpenMetrics => self.render(),
            ExpositionFormat::Prometheus => prometheus_text(&self.render()),
        }
    }
}

/// The two text formats `/metrics` answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpositionFormat {
    /// Prometheus' classic text format, what a plain GET (a browser, curl, most scrapers) gets.
    Prometheus,
    /// OpenMetrics 1.0, for a scraper whose `Accept` asks for it.
    OpenMetrics,
}

impl ExpositionFormat {
    /// OpenMetrics when `accept` names `application/openmetrics-text` (Prometheus itself asks so
    /// first), else the classic text format.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let asks = accept.is_some_and(|a| {
            a.split(',').any(|media| {
                let mut params = media.split(';');
                let named = params.next().is_some_and(|m| {
                    m.trim()
                        .eq_ignore_ascii_case("application/openmetrics-text")
                });
                // `q=0` means "not this one".
                let refused = params.any(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
                });
                named && !refused
            })
        });
        if asks {
            ExpositionFormat::OpenMetrics
        } else {
            ExpositionFormat::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ExpositionFormat::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            ExpositionFormat::OpenMetrics => {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            }
        }
    }
}

/// OpenMetrics text rewritten in the Prometheus text format (0.0.4): no `# EOF` or `# UNIT`
/// lines, and a counter's `# HELP`/`# TYPE` name its samples (`x_total`), not the family (`x`).
/// The samples themselves are written alike in both.
fn prometheus_text(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len() + 16 * counters.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let described = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = described {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(prefix);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(tail);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_is_asked_for_by_accept_only() {
        use ExpositionFormat::*;
        for (accept, want) in [
            (None, Prometheus),
            (Some("*/*"), Prometheus),
            (Some("text/plain"), Prometheus),
            (Some("application/openmetrics-text; version=1.0.0"), OpenMetrics),
            (
                Some("application/openmetrics-text;version=1.0.0;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
                OpenMetrics,
            ),
            (Some("Application/OpenMetrics-Text"), OpenMetrics),
            (Some("application/openmetrics-text;q=0, text/plain"), Prometheus),
        ] {
            assert_eq!(ExpositionFormat::negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn counters_gauges_and_histograms_are_rewritten_for_prometheus() {
        let metrics = Metrics::new();
        metrics
            .http_requests
            .get_or_create(&HttpLabels {
                method: "GET".into(),
                route: "/health".into(),
                status: 200,
            })
            .inc();
        let open = metrics.render_as(ExpositionFormat::OpenMetrics);
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(open.contains("# TYPE gatehouse_http_requests counter"));
        let text = metrics.render_as(ExpositionFormat::Prometheus);
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains("# UNIT"), "{text}");
        assert!(
            text.contains("# TYPE gatehouse_http_requests_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP gatehouse_http_requests_total "),
            "{text}"
        );
        assert!(text.contains(
            "gatehouse_http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} 1\n"
        ));
        // Histograms keep their family name: their samples are _bucket, _sum and _count.
        assert!(text.contains("# TYPE gatehouse_http_request_duration_seconds histogram\n"));
        // Every sample line of one is a sample line of the other.
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(samples(&open), samples(&text));
    }
}
